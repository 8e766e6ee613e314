"""Metrics files, plots and run comparison."""
import csv
import json

import pytest

from tractable.train import MetricsLogger, compare_runs, plot_compare, plot_run, read_metrics, train


@pytest.fixture
def two_runs(tiny_cfg):
    a = train(tiny_cfg("lr_a", optim={"name": "sgd", "lr": 0.1}, train={"log_every": 2}))
    b = train(tiny_cfg("lr_b", optim={"name": "sgd", "lr": 0.02}, train={"log_every": 2}))
    return a.run_dir, b.run_dir


def test_metrics_jsonl_and_csv(two_runs):
    d = two_runs[0]
    records = read_metrics(d)
    kinds = [r["kind"] for r in records]
    assert kinds == ["step", "step", "epoch", "step", "step", "epoch"]
    for r in records:
        assert {"kind", "step", "epoch"} <= set(r)
    step = records[0]
    assert {"loss", "acc", "lr", "img_s"} <= set(step) and step["step"] == 2
    epoch = records[2]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "time_s"} <= set(epoch) and epoch["epoch"] == 1
    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    assert float(rows[2]["test_acc"]) == pytest.approx(epoch["test_acc"])
    assert rows[0]["test_acc"] == ""  # step rows leave epoch columns empty


def test_plot_run_and_compare(two_runs, tmp_path):
    paths = plot_run(two_runs[0])
    assert sorted(p.name for p in paths) == ["accuracy.png", "loss.png", "lr.png"]
    for p in paths:
        assert p.parent == two_runs[0] / "plots" and p.read_bytes()[:4] == b"\x89PNG"
    table = compare_runs(two_runs)
    assert "lr_a" in table and "lr_b" in table
    assert "final test_acc" in table and "best test_acc" in table
    lines = [line for line in table.splitlines() if line.startswith("| optim.lr ")]
    assert lines and "0.1" in lines[0] and "0.02" in lines[0]
    assert "data.name" not in table  # identical keys are not listed
    out = plot_compare(two_runs, tmp_path / "cmp" / "acc.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_logger_truncate_and_non_finite(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for i in range(4):
        log.log({"kind": "step", "step": i + 1, "epoch": 0, "loss": float("nan") if i == 3 else 1.0})
    log.log({"kind": "epoch", "step": 4, "epoch": 1, "test_acc": 0.5})
    assert log.count == 5
    log.truncate_to(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2] and log.count == 2
    log.log({"kind": "step", "step": 3, "epoch": 0, "loss": float("inf")})
    log.close()
    assert read_metrics(tmp_path)[-1]["loss"] == "inf"
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])  # still valid JSON


def test_tensorboard_requested_but_missing(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tractable\\[tensorboard\\]"):
            MetricsLogger(tmp_path, tensorboard=True)
    else:
        pytest.skip("tensorboard is installed")

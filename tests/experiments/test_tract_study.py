"""The TrAct study: its statistics on constructed curves, argument checks, and (slow) a tiny end-to-end run."""
import json
import math

import pytest

from tractable.cli.main import main
from tractable.experiments.tract import stats
from tractable.experiments.tract.study import DEFAULTS, best_lambda, check_protocol


def test_t_interval_matches_the_textbook_formula():
    d = stats.t_interval([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["sd"] == pytest.approx(1.0)
    assert d["hi"] - d["mean"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2)
    one = stats.t_interval([5.0])  # one seed: no interval, never "resolved"
    assert one["mean"] == 5.0 and one["lo"] == -math.inf and one["hi"] == math.inf
    with pytest.raises(ValueError):
        stats.t_interval([])


def test_paired_differences_cancel_what_the_seeds_share():
    plain = [[50.0, 60.0, 70.0], [40.0, 55.0, 65.0], [60.0, 62.0, 75.0]]
    tract = [[p + 1.0 for p in c] for c in plain]  # +1 on every seed: zero spread, interval excludes 0
    ds = stats.paired_differences(tract, plain)
    assert all(d["mean"] == pytest.approx(1.0) and d["lo"] == pytest.approx(1.0) for d in ds)
    with pytest.raises(ValueError):
        stats.paired_differences(tract[:2], plain)


def test_epochs_to_reach_interpolates_and_speedup_is_the_papers_ratio():
    assert stats.epochs_to_reach([50, 60, 70, 80], 65) == pytest.approx(2.5)
    assert stats.epochs_to_reach([50, 60, 70, 80], 45) == 1.0  # already there at the first evaluation
    assert stats.epochs_to_reach([50, 60, 70, 80], 81) is None
    plain = [[50.0, 60.0, 70.0, 80.0]]
    assert stats.speedup([[60.0, 70.0, 80.0, 90.0]], plain) == pytest.approx(4 / 3)  # one epoch ahead
    assert stats.speedup([[80.0, 85.0, 88.0, 90.0]], plain) == pytest.approx(4.0)
    assert stats.speedup(plain, plain) == pytest.approx(1.0)
    assert stats.speedup([[40.0, 50.0, 60.0, 79.0]], plain) is None


def test_speedup_bootstrap_interval():
    plain = [[50.0, 60.0, 70.0, 80.0]] * 4
    same = stats.speedup_bootstrap([[60.0, 70.0, 80.0, 90.0]] * 4, plain, num_resamples=200)
    assert same["speedup"] == pytest.approx(4 / 3) and same["lo"] == same["hi"] == pytest.approx(4 / 3)
    assert same["reached"] == 1.0
    mixed = [[60.0, 70.0, 80.0, 90.0], [40.0, 50.0, 60.0, 70.0], [60.0, 70.0, 80.0, 90.0], [40.0, 50.0, 60.0, 70.0]]
    b = stats.speedup_bootstrap(mixed, plain, num_resamples=2000, seed=1)
    assert b["lo"] == 0.0 and 0 < b["reached"] < 1  # some resamples never reach plain's final accuracy
    assert b == stats.speedup_bootstrap(mixed, plain, num_resamples=2000, seed=1)  # explicit seed: reproducible


def test_best_lambda_prefers_accuracy_then_the_paper_default():
    sweep = {"tract0.05": {"acc": [1, 80.0]}, "tract0.1": {"acc": [1, 80.0]}, "tract1": {"acc": [1, 79.0]}}
    assert best_lambda(sweep, [0.05, 0.1, 1.0]) == 0.1
    sweep["tract1"]["acc"][-1] = 81.0
    assert best_lambda(sweep, [0.05, 0.1, 1.0]) == 1.0


@pytest.mark.parametrize("args, flag", [
    (["--models", "vit", "mlp"], "--models"), (["--optims", "lion"], "--optims"), (["--lambdas", "-1"], "--lambdas"),
    (["--seeds", "1"], "--seeds"), (["--epochs", "1"], "--epochs"), (["--subset", "10"], "--subset"),
    (["--sweep-seed", "3"], "--sweep-seed"), (["--lr-factors", "0"], "--lr-factors"),
    (["--dataset", "cifar10"], "--dataset"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(tmp_path, capsys, args, flag):
    out = tmp_path / "study"
    assert main(["tract-study", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag in err
    assert not out.exists()


def test_a_different_protocol_on_the_same_directory_is_refused(tmp_path):
    from tractable.experiments.tract.study import _prepare_out

    p = check_protocol(dict(DEFAULTS))
    _prepare_out(tmp_path, p)
    _prepare_out(tmp_path, dict(p))  # the same protocol: fine (completes a study)
    with pytest.raises(ValueError, match="epochs"):
        _prepare_out(tmp_path, {**p, "epochs": 7})
    assert json.loads((tmp_path / "study.json").read_text()) == p


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    from tractable.data import load_dataset

    try:
        load_dataset("fashion_mnist", "test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "s"
    assert main(["tract-study", "--out", str(out), "--models", "resnet", "--optims", "adam", "--lambdas", "0.1",
                 "0.3", "--lr-factors", "1", "--seeds", "2", "--epochs", "2", "--subset", "256",
                 "--test-subset", "256"]) == 0
    res = json.loads((out / "results.json").read_text())
    s = res["settings"]["resnet-adam"]
    assert set(s["paired"]) >= {"plain", "tract0.1"} and len(s["paired"]["plain"]) == 2
    assert len(s["differences"]["tract0.1"]) == 2
    assert (out / "results.md").read_text().count("resnet-adam") >= 3
    assert (out / "curves.png").is_file() and (out / "differences.png").is_file()

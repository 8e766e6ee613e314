"""The runner's TrAct diagnostics hook: right numbers for the captured micro-batch, logged, plotted, resumable."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import tractable
from tractable.experiments.tract.diagnostics import TrActDiagnosticsHook
from tractable.tract import layer_diagnostics
from tractable.train import config_from_dict, train


class _Trainer(SimpleNamespace):
    def log_scalars(self, values):
        self.logged.update(values)


def test_hook_logs_the_diagnostics_of_the_first_forward_of_a_diagnosed_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    tractable.TrAct(model[0], l=0.2)
    hook = TrActDiagnosticsHook("0", every=3)
    trainer = _Trainer(model=model, step=3, is_main=True, logged={})
    x = torch.randn(5, 1, 6, 6) * 2 + 0.5

    captured = {}

    def capture(m, a, out):
        captured.setdefault("x", a[0])
        out.register_hook(lambda g: captured.setdefault("g", g))

    model[0].register_forward_hook(capture)
    hook.before_step(trainer)
    model(x).square().sum().backward()
    model(torch.randn(5, 1, 6, 6)).sum().backward()  # a second micro-batch: not the one diagnosed
    hook.after_backward(trainer)
    assert captured["x"] is x
    want = layer_diagnostics(model[0], x, captured["g"])
    assert trainer.logged == {f"tract_{k}": v for k, v in want.items()}
    assert 0 < trainer.logged["tract_cosine"] < 1

    trainer.logged.clear()
    trainer.step = 4  # not a multiple of every: nothing registered, nothing logged
    hook.before_step(trainer)
    model(x).sum().backward()
    hook.after_backward(trainer)
    assert trainer.logged == {} and len(model[0]._forward_hooks) == 1  # only the test's own hook


def _cfg(tmp_path, name, epochs=2, **method):
    return config_from_dict({
        "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 256, "subset": 128, "test_subset": 64},
        "model": {"name": "small_cnn"},
        "method": {"name": "tract", "l": 0.1, **method},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": epochs, "device": "cpu", "progress": False, "tensorboard": False, "log_every": 1,
                  "plots": False},
        "out_dir": str(tmp_path), "name": name,
    })


def test_runner_logs_the_diagnostics(tmp_path):
    res = train(_cfg(tmp_path, "diag", epochs=1, diag_every=2))
    steps = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    with_diag = [r["step"] for r in steps if "tract_cosine" in r]
    assert with_diag == [1, 3]  # diagnosed before steps 0 and 2, logged with the next record
    r = steps[0]
    assert math.isfinite(r["tract_cond"]) and r["tract_cond"] >= 1 and 0 < r["tract_cosine"] <= 1
    assert 1 <= r["tract_eff_rank"] <= 27 and r["tract_cond_k"] >= 1


def test_plot_draws_the_logged_diagnostics(tmp_path):
    pytest.importorskip("matplotlib")
    from tractable.train import plot_run

    records = [{"kind": "step", "step": s, "epoch": s / 4, "loss": 1.0 / s, "tract_cond": 10.0 + s,
                "tract_cosine": 0.9} for s in range(1, 9)]
    records.append({"kind": "epoch", "epoch": 2, "step": 8, "test_acc": 0.5, "test_loss": 1.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    paths = plot_run(tmp_path)
    assert tmp_path / "plots" / "tract_diagnostics.png" in paths
    assert (tmp_path / "plots" / "tract_diagnostics.png").stat().st_size > 1000


def test_diagnostics_off_and_a_run_saved_without_them_resumes_with_them(tmp_path):
    res = train(_cfg(tmp_path, "old", epochs=1, diag_every=0))
    assert not any("tract_cond" in line for line in (res.run_dir / "metrics.jsonl").read_text().splitlines())
    cfg = _cfg(tmp_path, "old", epochs=2, diag_every=2)  # one more (stateless) hook than the checkpoint has
    cfg.resume = True
    res = train(cfg)
    assert res.summary["epochs"] == 2
    assert "tract_cond" in (res.run_dir / "metrics.jsonl").read_text()


def test_option_validation():
    from tractable.train.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="diag_every"):
        config_from_dict({"data": {"name": "synthetic"}, "model": {"name": "small_cnn"}, "optim": {"lr": 0.1},
                          "train": {"epochs": 1}, "method": {"name": "tract", "diag_every": -1}})

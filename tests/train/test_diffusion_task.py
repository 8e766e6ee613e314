"""The ``diffusion`` task in the runner: options validated like config keys, a run with TrAct, kill -9 + resume
bit-identical, and a 2-rank gloo DDP smoke run (reusing the machinery of test_resume / test_distributed)."""
import json

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.train.test_distributed import _free_port, _worker
from tests.train.test_resume import assert_same_checkpoint, kill_and_resume
from tractable.train import ConfigError, config_from_dict, config_to_dict, latest_checkpoint, train
from tractable.train.task import list_tasks


def diffusion_dict(tmp_path, name="run", model="dit_tiny_2", method=None, **train_kw):
    return {
        "task": "diffusion",
        "task_kwargs": {"num_timesteps": 100, "prediction": "x0"},
        "data": {"name": "digits", "batch_size": 32, "eval_batch_size": 64, "subset": 160, "test_subset": 64},
        "model": {"name": model},
        "method": method or {"name": "tract", "l": 0.1},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"epochs": 2, "progress": False, "plots": False, "tensorboard": False, "log_every": 1,
                  "device": "cpu", **train_kw},
        "out_dir": str(tmp_path),
        "name": name,
    }


def test_registered_and_options_validated(tmp_path):
    assert "diffusion" in list_tasks()
    cfg = config_from_dict(diffusion_dict(tmp_path))
    assert config_to_dict(cfg)["task_kwargs"] == {"num_timesteps": 100, "prediction": "x0"}
    for bad, match in (({"schedule": "sigmoid"}, "task_kwargs.schedule.*'cosine', 'linear'"),
                       ({"prediction": "score"}, "task_kwargs.prediction"),
                       ({"gamma": -1.0}, "task_kwargs.gamma"),
                       ({"steps": 3}, "unknown key 'task_kwargs.steps'")):
        d = diffusion_dict(tmp_path, name=f"bad{len(match)}")
        d["task_kwargs"] = bad
        with pytest.raises(ConfigError, match=match):
            train(config_from_dict(d))
        assert not (tmp_path / f"bad{len(match)}").exists()  # nothing written


@pytest.mark.parametrize("model", ["dit_tiny_2", "mdit_tiny", "unet_tiny"])
def test_trains_with_tract_and_is_reproducible(tmp_path, model):
    a = train(config_from_dict(diffusion_dict(tmp_path, "a", model, ema=0.9)))
    b = train(config_from_dict(diffusion_dict(tmp_path, "b", model, ema=0.9)))
    assert a.summary["method"].startswith("tract(") and a.summary["steps"] == 10
    assert a.summary["final_test_loss"] == b.summary["final_test_loss"]
    assert "ema_test_loss" in a.summary
    wa, wb = (load_file(str(latest_checkpoint(r.run_dir / "checkpoints") / "model.safetensors")) for r in (a, b))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_eval_loss_uses_fixed_noise(tmp_path):
    from tractable.train.diffusion_task import DiffusionTask

    task = DiffusionTask()
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    loader = [(torch.randn(8, 1, 4, 4), torch.zeros(8, dtype=torch.long))]

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x, t, y=None):
            return self.m(x)

    m = M()
    first = task.evaluate(m, loader)
    assert first == task.evaluate(m, loader)
    task.generator = torch.Generator().manual_seed(123)  # a training generator is restored after evaluation
    task.evaluate(m, loader)
    assert task.generator.initial_seed() == 123


def test_sigkill_and_resume_is_bitwise(tmp_path):
    kw = dict(epochs=4, save_every_steps=3, ema=0.9, keep_checkpoints=2, log_every=1)
    d = diffusion_dict(tmp_path, "run", **kw)
    d["resume"] = True
    last_ref, last_run = kill_and_resume(
        tmp_path, config_from_dict(diffusion_dict(tmp_path, "ref", **kw)),
        config_from_dict(diffusion_dict(tmp_path, "run", **kw)), config_from_dict(d), delay=0.1, wait_s=120,
        timeout=300)
    assert last_run.name == "step_00000020"
    assert_same_checkpoint(last_ref, last_run, ema=True)


@pytest.mark.distributed
def test_ddp_two_ranks_smoke(tmp_path):
    d = diffusion_dict(tmp_path, "ddp", method={"name": "tract", "l": 0.1, "exact": True}, grad_accum=2)
    mp.spawn(_worker, args=(2, _free_port(), [d]), nprocs=2, join=True)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 10
    steps = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["kind"] == "step"]
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
    w = load_file(str(latest_checkpoint(tmp_path / "ddp" / "checkpoints") / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_task_kwargs_for_a_task_without_options_is_an_error(tmp_path):
    from tests.train.conftest import tiny_dict

    d = tiny_dict(tmp_path, "cls")
    d["task_kwargs"] = {"prediction": "eps"}
    with pytest.raises(ConfigError, match="task_kwargs: task 'classification' takes no options, got prediction"):
        train(config_from_dict(d))


def test_defaults_ema_on_and_cond_drop_for_class_conditional(tmp_path):
    from tractable.models import create_model
    from tractable.train.diffusion_task import DiffusionTask, effective_cond_drop

    cfg = config_from_dict(diffusion_dict(tmp_path, "defaults", save_every=0))
    assert cfg.train.ema is None and DiffusionTask.default_ema == 0.9999
    res = train(cfg)
    assert "ema_test_loss" in res.summary  # EMA on by default for diffusion
    assert (latest_checkpoint(res.run_dir / "checkpoints") / "ema.safetensors").is_file()
    cond = create_model("dit_tiny_2", image_size=8, in_channels=1, class_cond=True, num_classes=10)
    uncond = create_model("dit_tiny_2", image_size=8, in_channels=1)
    assert effective_cond_drop(None, cond) == 0.1 and effective_cond_drop(None, uncond) == 0.0
    assert effective_cond_drop(0.0, cond) == 0.0 and effective_cond_drop(0.3, uncond) == 0.3

    class Wrapped(torch.nn.Module):  # DDP-style wrapper
        def __init__(self, m):
            super().__init__()
            self.module = m

    assert effective_cond_drop(None, Wrapped(cond)) == 0.1
    # the task drops labels of a class-conditional model in training (and not in evaluation)
    seen = []

    class Spy(torch.nn.Module):
        class_cond = True

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, y):
            seen.append(y.clone())
            return x * self.p

    task, spy = DiffusionTask(), Spy()
    task.generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(400, 1, 2, 2), torch.zeros(400, dtype=torch.long))
    task.loss(spy.train(), batch)
    task.loss(spy.eval(), batch)
    dropped = (seen[0] == -1).float().mean().item()
    assert 0.05 < dropped < 0.15 and (seen[1] == 0).all()
    # classification runs keep the EMA off unless asked
    from tractable.train.task import Classification

    assert Classification.default_ema == 0.0

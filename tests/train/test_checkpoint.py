"""Checkpoints: safetensors weights with state_dict keys, a weights_only state file, atomic pointer, pruning,
and a full restore of optimizer, schedule, EMA and RNG states."""
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from tractable.train import (
    ModelEMA,
    OptimConfig,
    ScheduleConfig,
    build_optimizer,
    build_scheduler,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight  # tied: two state_dict keys share storage

    def forward(self, i):
        return self.out(self.body(self.emb(i)))


def _train(model, opt, sched, ema, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, 7, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(i), i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)


def _parts(seed=0):
    torch.manual_seed(seed)
    model = Tied()
    opt = build_optimizer(model.parameters(), OptimConfig(name="adamw", lr=0.01, weight_decay=0.1))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_epochs=1), 3, 4)
    ema = ModelEMA(model, 0.9)
    return model, opt, sched, ema


def test_save_load_weights_only_and_resume_exactly(tmp_path):
    model, opt, sched, ema = _parts()
    _train(model, opt, sched, ema, 5, seed=1)
    ck = save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, ema=ema, step=5, epoch=1,
                         extra={"batch": 2, "note": "x", "sums": {"loss": torch.tensor(1.5)}})
    assert ck.name == "step_00000005"
    # the training state is readable without unpickling arbitrary objects
    state = torch.load(ck / "state.pt", weights_only=True)
    assert state["step"] == 5 and state["epoch"] == 1 and state["extra"]["batch"] == 2
    weights = load_file(str(ck / "model.safetensors"))
    assert sorted(weights) == sorted(model.state_dict())  # every key, including both tied names
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)
    # RNG states are saved too: draw now, then again after restoring
    expect = (torch.rand(3), np.random.rand(), random.random())

    # continue the original for 4 more steps
    _train(model, opt, sched, ema, 4, seed=2)

    model2, opt2, sched2, ema2 = _parts(seed=99)
    torch.rand(100), np.random.rand(5), random.random()  # disturb the global RNGs
    state = load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2, ema=ema2)
    got = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(got[0], expect[0]) and got[1] == expect[1] and got[2] == expect[2]
    assert state["extra"]["note"] == "x" and state["step"] == 5
    _train(model2, opt2, sched2, ema2, 4, seed=2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.module.state_dict().values(), ema2.module.state_dict().values()):
        assert torch.equal(a, b)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_latest_pointer_pruning_and_resave(tmp_path):
    model, opt, sched, ema = _parts()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model=model, optimizer=opt, step=step, epoch=0, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000004"
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    save_checkpoint(tmp_path, model=model, step=4, epoch=1, keep=2)  # same step again: replaced in place
    assert torch.load(tmp_path / "step_00000004" / "state.pt", weights_only=True)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_incomplete_checkpoint_is_ignored(tmp_path):
    model, opt, _, _ = _parts()
    save_checkpoint(tmp_path, model=model, optimizer=opt, step=1, epoch=0)
    # a crash while writing step 2 leaves a temp dir and no pointer update
    (tmp_path / ".tmp-step_00000002-123").mkdir()
    (tmp_path / ".tmp-step_00000002-123" / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    load_checkpoint(tmp_path, model=model, optimizer=opt)


def test_missing_checkpoint_and_missing_state(tmp_path):
    model, opt, _, _ = _parts()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none", model=model)
    save_checkpoint(tmp_path, model=model, step=1, epoch=0)
    with pytest.raises(KeyError, match="optimizer"):
        load_checkpoint(tmp_path, model=model, optimizer=opt)

"""Optimizers and per-iteration schedules: closed forms, state round trip, errors."""
import math

import pytest
import torch

from tractable.train import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler


def _lrs(sched_cfg, steps_per_epoch, epochs, lr=0.1, n=None):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], OptimConfig(lr=lr))
    sched = build_scheduler(opt, sched_cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(n or steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])  # the lr this optimizer step uses
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_matches_closed_form():
    spe, epochs, lr, min_lr = 10, 5, 0.1, 0.001
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1.0, min_lr=min_lr)
    lrs = _lrs(cfg, spe, epochs, lr)
    W, T = 10, 50

    def expected(t):
        if t < W:
            return lr * (t + 1) / W
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))

    for t in (0, 4, 9, 10, 11, 25, 30, 49):
        assert lrs[t] == pytest.approx(expected(t), rel=1e-12, abs=1e-15), t
    assert lrs[9] == pytest.approx(lr) and lrs[10] == pytest.approx(lr)  # end of warm-up, start of cosine
    assert lrs[30] == pytest.approx((lr + min_lr) / 2)  # half way through the cosine phase
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # non-increasing after warm-up


def test_cosine_without_warmup_and_fractional_warmup():
    lrs = _lrs(ScheduleConfig(name="cosine"), 4, 2, lr=1.0)
    assert lrs[0] == 1.0 and lrs[4] == pytest.approx(0.5)
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=0.5), 4, 2, lr=1.0)
    assert lrs[:2] == [0.5, 1.0]


def test_step_decay_at_epoch_milestones():
    cfg = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1)
    lrs = _lrs(cfg, 10, 6)
    assert lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.01)
    assert lrs[39] == pytest.approx(0.01)
    assert lrs[40] == pytest.approx(0.001)
    assert lrs[59] == pytest.approx(0.001)


def test_none_with_warmup_is_linear_then_flat():
    lrs = _lrs(ScheduleConfig(name="none", warmup_epochs=1), 4, 3, lr=0.2)
    assert lrs[:5] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    assert lrs[-1] == pytest.approx(0.2)


def test_scheduler_state_round_trip():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], OptimConfig(lr=0.1))
    sched = build_scheduler(opt, cfg, 5, 4)
    for _ in range(7):
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()
    p2 = torch.nn.Parameter(torch.zeros(2))
    opt2 = build_optimizer([p2], OptimConfig(lr=0.1))
    sched2 = build_scheduler(opt2, cfg, 5, 4)
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    for _ in range(5):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step(), sched.step(), opt2.step(), sched2.step()


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_build_optimizer_kinds(name, cls):
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], OptimConfig(name=name, lr=0.01, weight_decay=0.1))
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 0.1


def test_build_optimizer_lion_and_groups():
    pytest.importorskip("lion_pytorch")
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([{"params": [a]}, {"params": [b], "weight_decay": 0.0}],
                          OptimConfig(name="lion", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1))
    assert type(opt).__name__ == "Lion" and len(opt.param_groups) == 2
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_errors():
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer([], OptimConfig(lr=0.1))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], OptimConfig(lr=0.1))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(opt, ScheduleConfig(), 0, 1)

"""ModelEMA: the warm-up schedule d_k = min(decay, (1 + k)/(10 + k)) against a float64 weighted average written
out, the initial weights' share, old states without warm-up, and the export next to the model weights."""
import math

import pytest
import torch

from tractable.train.ema import DIT_DECAY, ModelEMA


def _reference(values, decay, warmup):
    """EMA of a sequence of scalars in float64, with the weight of every term kept explicitly."""
    weights = [1.0]  # the initial value
    for k in range(1, len(values)):
        d = min(decay, k / (9.0 + k)) if warmup else decay  # update k-1: (1 + (k-1))/(10 + (k-1))
        weights = [w * d for w in weights] + [1.0 - d]
    return sum(w * v for w, v in zip(weights, values)), weights[0]


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_equals_the_weighted_average(warmup):
    lin = torch.nn.Linear(1, 1, bias=False).double()
    ema = ModelEMA(lin, 0.99, warmup=warmup)
    values = [float(lin.weight.detach())]
    for k in range(60):
        with torch.no_grad():
            lin.weight.fill_(math.sin(k) + 2.0)
        values.append(float(lin.weight.detach()))
        ema.update(lin)
    expected, share = _reference(values, 0.99, warmup)
    assert float(ema.module.weight) == pytest.approx(expected, rel=1e-12)
    assert ema.init_share == pytest.approx(share, rel=1e-12)
    assert ema.num_updates == 60


def test_warmup_schedule_and_warmed_up():
    ema = ModelEMA(torch.nn.Linear(2, 2), DIT_DECAY)
    assert DIT_DECAY == 0.9999 and ema.warmup
    ds = []
    for _ in range(12):
        ds.append(ema.current_decay())
        ema.update(ema.module)
    assert ds[:3] == [pytest.approx(0.1), pytest.approx(2 / 11), pytest.approx(3 / 12)]
    assert ema.warmed_up and ema.init_share < 1e-5
    no = ModelEMA(torch.nn.Linear(2, 2), 0.99, warmup=False)
    for _ in range(92):
        no.update(no.module)
    assert no.init_share == pytest.approx(0.99 ** 92) and not no.warmed_up  # 40 % of the average


def test_old_state_without_warmup_loads():
    ema = ModelEMA(torch.nn.Linear(2, 2), 0.9)
    state = ema.state_dict()
    state.pop("warmup"), state.pop("init_share")
    state["num_updates"] = 5
    ema.load_state_dict(state)
    assert not ema.warmup and ema.init_share == pytest.approx(0.9 ** 5)


def test_checkpoint_exports_ema_safetensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tractable.train.checkpoint import EMA_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, 0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    ck = save_checkpoint(tmp_path, model=model, ema=ema, step=7, epoch=1)
    exported = load_file(str(ck / EMA_FILE))
    assert exported.keys() == load_file(str(ck / WEIGHTS_FILE)).keys()
    for k, v in ema.module.state_dict().items():
        assert torch.equal(exported[k], v)
    with safe_open(str(ck / EMA_FILE), "pt") as f:
        meta = f.metadata()
    assert meta["num_updates"] == "1" and meta["warmup"] == "True" and float(meta["decay"]) == 0.9
    plain = save_checkpoint(tmp_path / "noema", model=model, step=1, epoch=0)
    assert not (plain / EMA_FILE).exists()
    restored = ModelEMA(torch.nn.Linear(3, 2), 0.5)
    load_checkpoint(ck, ema=restored, restore_rng=False)
    assert restored.decay == 0.9 and restored.init_share == ema.init_share

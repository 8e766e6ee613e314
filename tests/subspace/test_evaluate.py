"""Evaluation: ECE / NLL / TV against hand computations, the α grid, ensembles, simplex evaluation."""
import math

import pytest
import torch

import tractable.subspace as ts
from tests.subspace._models import BNCNN


def test_ece_nll_tv_by_hand():
    # confidences 0.9 (correct), 0.6 (wrong), 0.55 (correct), 0.3... built from probabilities via log
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    logits = probs.log()
    # 20 bins of width 0.05: 0.9 → bin (0.85, 0.9]; 0.6 → (0.55, 0.6]; 0.55 → (0.5, 0.55]; 0.8 → (0.75, 0.8]
    gaps = [abs(1 - 0.9), abs(0 - 0.6), abs(1 - 0.55), abs(1 - 0.8)]
    assert ts.ece(logits, labels, 20) == pytest.approx(sum(gaps) / 4, abs=1e-12)
    # two in one bin: with 2 bins, 0.9 and 0.6 and 0.55 and 0.8 all fall in (0.5, 1]
    assert ts.ece(logits, labels, 2) == pytest.approx(abs(3 - (0.9 + 0.6 + 0.55 + 0.8)) / 4, abs=1e-12)
    ref_nll = -(math.log(0.9) + math.log(0.4) + math.log(0.55) + math.log(0.8)) / 4
    assert ts.nll(logits, labels) == pytest.approx(ref_nll)
    assert ts.accuracy(logits, labels) == 0.75
    other = torch.tensor([[0.5, 0.5]] * 4, dtype=torch.float64).log()
    assert ts.tv_distance(logits, other) == pytest.approx((0.4 + 0.1 + 0.05 + 0.3) / 4)
    with pytest.raises(ValueError, match="n_bins"):
        ts.ece(logits, labels, 0)
    ens = ts.combine_logits([logits, other], "probs")
    assert torch.allclose(ens.exp(), (probs + 0.5) / 2)
    assert torch.allclose(ts.combine_logits([logits, other]), (logits + other) / 2)
    with pytest.raises(ValueError, match="'logits', 'probs'"):
        ts.combine_logits([logits], "vote")


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, n, 16)]


def test_alpha_grid_ensembles_and_bn_per_point():
    torch.manual_seed(0)
    model = BNCNN()
    sub = ts.convert(model, BNCNN, kind="line")
    train, test = _data(48, 1), _data(32, 2)
    sub.set_point(0.3)
    before_point, before_bn = sub.point, ts.bn_buffers(model)
    res = ts.evaluate_grid(sub, train, test, step=0.05)
    assert torch.equal(sub.point, before_point)  # the model is left as it was found: point and statistics
    assert all(torch.equal(b, before_bn[n][k]) for n, bufs in ts.bn_buffers(model).items() for k, b in bufs.items())
    assert len(res["points"]) == 21 and [p["alpha"] for p in res["points"]][:3] == [0.0, 0.05, 0.1]
    assert len(res["pairs"]) == 11
    mid_pair = res["pairs"][-1]
    assert mid_pair["alpha0"] == mid_pair["alpha1"] == 0.5
    assert mid_pair["ens_acc"] == res["midpoint"]["acc"] and mid_pair["tv"] == 0.0
    assert mid_pair["ens_nll"] == pytest.approx(res["midpoint"]["nll"], rel=1e-6)
    assert res["endpoint_ensemble"]["alpha0"] == 0.0 and res["endpoint_ensemble"]["alpha1"] == 1.0
    assert len(sub._bn_cache) == 21  # one recompute per evaluated point
    # each point's numbers are those of the exported network with update_bn over the same batches
    from torch.optim.swa_utils import update_bn

    plain = sub.export(0.3)
    update_bn([b[0] for b in train], plain)
    logits, labels = ts.predict(plain, test)
    p03 = next(p for p in res["points"] if p["alpha"] == 0.3)
    assert p03["acc"] == ts.accuracy(logits, labels)
    assert p03["nll"] == pytest.approx(ts.nll(logits, labels), rel=1e-5)
    # an endpoint-ensemble by hand
    l0, _ = ts.predict(sub.export(0.0), test)
    l1, _ = ts.predict(sub.export(1.0), test)
    assert res["endpoint_ensemble"]["ens_acc"] == ts.accuracy((l0 + l1) / 2, labels)
    probs = ts.evaluate_grid(sub, train, test, step=0.5, combine="probs", mixture_bn=False)
    assert len(probs["points"]) == 3 and "midpoint_mixture_bn" not in probs
    with pytest.raises(ValueError, match="whole number"):
        ts.alpha_grid(0.3)


def test_simplex_and_models_evaluation():
    torch.manual_seed(0)
    model = BNCNN()
    sub = ts.convert(model, BNCNN, kind="simplex", k=3)
    train, test = _data(32, 1), _data(32, 2)
    sub.set_point([0.2, 0.3, 0.5])
    before_point, before_mean = sub.point, model.bn1.running_mean.clone()
    res = ts.evaluate_simplex(sub, train, test, generator=torch.Generator().manual_seed(0), ensemble_size=2,
                              heatmap_step=0.5)
    assert torch.equal(sub.point, before_point) and torch.equal(model.bn1.running_mean, before_mean)
    assert len(res["vertices"]) == 3 and res["random_ensemble"]["size"] == 2
    assert len(res["heatmap"]) == 6
    with pytest.raises(ValueError, match="evaluate_simplex"):
        ts.evaluate_grid(sub, train, test)
    a, b = sub.export([1, 0, 0]), sub.export([0, 1, 0])
    out = ts.evaluate_models([a, b], test)
    assert len(out["members"]) == 2 and 0 <= out["disagreement"] <= 1 and "ensemble" in out

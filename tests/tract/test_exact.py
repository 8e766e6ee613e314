"""T11/T12: exact mode equals single-process full-batch TrAct under DDP (2 gloo ranks) and accumulation."""
import copy
import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import tractable
from tractable.train import skip_interpreter_teardown


def _model(dtype):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate"), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).to(dtype)


def _data(dtype, n=8):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _loss(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _full_batch(dtype, exact=False, plain=False):
    model = _model(dtype)
    if not plain:
        tractable.TrAct(model[0], l=0.1, exact=exact)
    x, y = _data(dtype)
    _loss(model, x, y).backward()
    if exact:
        tractable.precondition_(model)
    return _grads(model)


def _worker(rank, world, init_file, out_dir, dtype, exact, micro):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _model(dtype)
        tractable.TrAct(model[0], l=0.1, exact=exact)
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y = _data(dtype)
        shard = slice(rank * 4, (rank + 1) * 4)
        xs, ys = x[shard], y[shard]
        k = 4 // micro
        for i in range(micro):
            ctx = ddp.no_sync() if i < micro - 1 else _nullcontext()
            with ctx:
                (_loss(ddp, xs[i * k:(i + 1) * k], ys[i * k:(i + 1) * k]) / micro).backward()
        n = tractable.precondition_(model)
        assert n == (1 if exact else 0)
        torch.save(_grads(model), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    skip_interpreter_teardown()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _run_ddp(tmp_path, dtype, exact, micro=1):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), dtype, exact, micro), nprocs=2)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.distributed
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("micro", [1, 2], ids=["ddp", "ddp+no_sync"])
def test_ddp_exact_mode_equals_single_process_full_batch(tmp_path, dtype, tol, micro):
    ranks = _run_ddp(tmp_path, dtype, exact=True, micro=micro)
    full = _full_batch(dtype)
    plain = _full_batch(dtype, plain=True)
    for g in ranks:
        assert _rel(g["0.weight"], full["0.weight"]) <= tol
        for k in ("0.bias", "3.weight", "3.bias"):  # other parameters: plain DDP
            assert _rel(g[k], plain[k]) <= max(tol, 1e-6)
    assert torch.equal(ranks[0]["0.weight"], ranks[1]["0.weight"])


@pytest.mark.distributed
def test_ddp_default_mode_is_the_mean_of_per_shard_tract_and_differs_from_full_batch(tmp_path):
    dtype = torch.float64
    ranks = _run_ddp(tmp_path, dtype, exact=False)
    x, y = _data(dtype)
    per_shard = []
    for r in range(2):
        model = _model(dtype)
        tractable.TrAct(model[0], l=0.1)
        _loss(model, x[r * 4:(r + 1) * 4], y[r * 4:(r + 1) * 4]).backward()
        per_shard.append(model[0].weight.grad)
    mean = (per_shard[0] + per_shard[1]) / 2
    assert _rel(ranks[0]["0.weight"], mean) < 1e-10
    assert _rel(ranks[0]["0.weight"], _full_batch(dtype)["0.weight"]) > 1e-3


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_exact_mode_equals_full_batch(k):
    dtype = torch.float64
    model = _model(dtype)
    tractable.TrAct(model[0], l=0.1, exact=True)
    x, y = _data(dtype)
    m = 8 // k
    for i in range(k):
        (_loss(model, x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) / k).backward()
    assert tractable.tract.pending(model)
    assert tractable.precondition_(model) == 1
    assert not tractable.tract.pending(model)
    assert tractable.precondition_(model) == 0  # applied once per step
    full = _full_batch(dtype)
    assert _rel(model[0].weight.grad, full["0.weight"]) < 1e-10
    # the default mode differs (per micro-batch preconditioners)
    model2 = _model(dtype)
    tractable.TrAct(model2[0], l=0.1)
    for i in range(k):
        (_loss(model2, x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) / k).backward()
    assert _rel(model2[0].weight.grad, full["0.weight"]) > 1e-3


def test_attach_preconditions_before_each_step_and_matches_manual_calls():
    dtype = torch.float64
    x, y = _data(dtype)
    a, b = _model(dtype), _model(dtype)
    for m in (a, b):
        tractable.TrAct(m[0], l=0.1, exact=True)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    handle = tractable.attach(opt_a, a)
    for _ in range(3):
        for m, opt, manual in ((a, opt_a, False), (b, opt_b, True)):
            opt.zero_grad()
            for i in range(2):
                (_loss(m, x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]) / 2).backward()
            if manual:
                tractable.precondition_(m)
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    handle.remove()


def test_a_missing_precondition_call_warns():
    dtype = torch.float64
    model = _model(dtype)
    tractable.TrAct(model[0], exact=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(dtype)
    _loss(model, x, y).backward()
    opt.step()
    opt.zero_grad()
    with pytest.warns(UserWarning, match="precondition_"):
        _loss(model, x, y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tractable.precondition_(model)
        opt.step()
        opt.zero_grad()
        _loss(model, x, y).backward()


def test_exact_mode_without_precondition_leaves_the_plain_gradient():
    dtype = torch.float64
    model = _model(dtype)
    plain = copy.deepcopy(model)
    tractable.TrAct(model[0], exact=True)
    x, y = _data(dtype)
    _loss(model, x, y).backward()
    _loss(plain, x, y).backward()
    assert torch.equal(model[0].weight.grad, plain[0].weight.grad)


def test_linear_exact_mode_with_accumulation_equals_full_batch():
    torch.manual_seed(0)
    base = nn.Linear(12, 5).double()
    x = torch.randn(3, 8, 12, dtype=torch.float64)  # tokens: b = 24 rows
    R = torch.randn(3, 8, 5, dtype=torch.float64)
    full = tractable.TrAct(copy.deepcopy(base), l=0.1)
    (full(x) * R).sum().backward()
    exact = tractable.TrAct(copy.deepcopy(base), l=0.1, exact=True)
    for i in range(3):
        (exact(x[i:i + 1]) * R[i:i + 1]).sum().backward()
    tractable.precondition_(exact)
    assert _rel(exact.weight.grad, full.weight.grad) < 1e-10

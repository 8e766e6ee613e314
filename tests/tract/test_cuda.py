"""TrAct on CUDA against the float64 reference: autocast fp16/bf16, fp16/bf16 parameters, exact mode with
accumulation, ``torch.compile`` (inductor), and one runner epoch in bf16 autocast.

The ``cuda`` parametrisations carry the ``cuda`` marker and are skipped without a CUDA device; the CPU ones run
in the default suite so that the checks themselves are exercised everywhere. ``benchmarks/gpu_check.sh`` runs
``pytest tests/tract/test_cuda.py tests/tract/test_precision.py -k cuda`` on a GPU machine.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn

import tractable
from tests.tract._reference import reference
from tests.tract.test_exact import _data, _full_batch, _loss, _model

_NO_CUDA = not torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")])


def _cuda(*args):
    return pytest.param(*args, marks=[pytest.mark.cuda, pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")],
                        id="-".join(str(a).replace("torch.", "") for a in args))


LAYERS = {
    "stem": (lambda: nn.Conv2d(3, 16, 3, padding=1, bias=False), (16, 3, 8, 8)),
    "patch": (lambda: nn.Conv2d(3, 32, 4, stride=4), (8, 3, 16, 16)),
    "linear": (lambda: nn.Linear(12, 6), (64, 12)),
}


def _rel(a, b):
    return ((a.detach().cpu().double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), _cuda("cuda", torch.float16), _cuda("cuda", torch.bfloat16)])
def test_autocast_gradient_matches_float64_reference(name, device, dtype):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    base = make()
    x = torch.randn(shape)
    layer = tractable.TrAct(copy.deepcopy(base), l=0.1).to(device)
    with torch.autocast(device_type=device, dtype=dtype):
        out = layer(x.to(device))
    assert out.dtype == dtype
    R = torch.randn(out.shape)
    (out.float() * R.to(device)).sum().backward()
    g = layer.weight.grad
    assert g.dtype == torch.float32 and g.device.type == device and torch.isfinite(g).all()
    _, plain, ref = reference(copy.deepcopy(base).double(), x.double(), R.double(), 0.1)
    assert _rel(g, ref) < 2e-2
    assert _rel(plain, ref) > 0.1  # the check can tell TrAct from the plain gradient


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), _cuda("cuda", torch.float16), _cuda("cuda", torch.bfloat16)])
def test_low_precision_parameters_match_float64_reference(name, device, dtype):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    base = make().to(dtype)
    x = torch.randn(shape).to(dtype)
    layer = tractable.TrAct(copy.deepcopy(base), l=0.1).to(device)
    out = layer(x.to(device))
    assert out.dtype == dtype
    R = torch.randn(out.shape).to(dtype)
    (out * R.to(device)).sum().backward()
    g = layer.weight.grad
    assert g.dtype == dtype and torch.isfinite(g).all()
    ref = reference(copy.deepcopy(base).double(), x.double(), R.double(), 0.1)[2]
    assert _rel(g, ref) < 2e-2


@pytest.fixture
def no_tf32():
    """float32 convolutions and matmuls in full float32 on CUDA (cuDNN uses TF32 for them by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_exact_mode_with_accumulation_matches_float64_full_batch(device, k, no_tf32):
    model = _model(torch.float32)
    tractable.TrAct(model[0], l=0.1, exact=True)
    model.to(device)
    x, y = _data(torch.float32)
    x, y = x.to(device), y.to(device)
    m = x.shape[0] // k
    for i in range(k):
        (_loss(model, x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) / k).backward()
    assert tractable.precondition_(model) == 1
    full = _full_batch(torch.float64)
    assert _rel(model[0].weight.grad, full["0.weight"]) < 1e-4
    assert _rel(model[0].weight.grad, _full_batch(torch.float64, plain=True)["0.weight"]) > 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["conv", "patch"])
def test_cuda_compile_inductor_matches_eager_and_float64(kind):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    first = nn.Conv2d(3, 8, 3, padding=1) if kind == "conv" else nn.Conv2d(3, 16, 4, stride=4)
    net = nn.Sequential(first, nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(first.out_channels * 4, 5))
    tractable.TrAct(net[0], l=0.1)
    net = net.cuda()
    eager = copy.deepcopy(net)
    x = torch.randn(16, 3, 16, 16, device="cuda")
    y = torch.randint(0, 5, (16,), device="cuda")
    compiled = torch.compile(net, fullgraph=True)
    for model in (compiled, eager):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    g, g_eager = net[0].weight.grad, eager[0].weight.grad
    assert torch.isfinite(g).all()
    assert _rel(g, g_eager.double()) < 2e-2
    # float64 formula on the same rows: G from a float64 replay of the eager network's forward
    ref_net = copy.deepcopy(eager).double().cpu()
    ref_net.zero_grad()
    out1 = ref_net[0](x.double().cpu())
    G = torch.autograd.grad(nn.functional.cross_entropy(ref_net[1:](out1), y.cpu()), out1)[0]
    _, plain, ref = reference(ref_net[0], x.double().cpu(), G, 0.1)
    assert _rel(g, ref) < 2e-2  # 4e-3 with aot_eager on the CPU
    assert _rel(plain, ref) > 5e-2  # 0.09 (conv) and 0.39 (patch): the check tells TrAct from plain


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_runner_epoch_with_tract_under_bf16_autocast(device, tmp_path):
    from tractable.train import train

    cfg = {
        "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64,
                 "kwargs": {"num_samples": 64}},
        "model": {"name": "small_cnn"},
        "optim": {"name": "sgd", "lr": 0.05},
        "method": {"name": "tract"},
        "train": {"epochs": 1, "device": device, "amp": "bf16", "eval_every": 0, "save_every": 0,
                  "progress": False, "plots": False, "tensorboard": False},
        "out_dir": str(tmp_path), "name": "run",
    }
    result = train(cfg)
    assert tractable.is_tract(result.model.conv1)
    assert result.model.conv1.weight.device.type == device
    assert result.summary["steps"] == 2 and math.isfinite(result.summary["images_per_s"])
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

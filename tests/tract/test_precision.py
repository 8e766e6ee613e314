"""T7/T8: autocast (CPU bf16; CUDA fp16/bf16 when a GPU is present) and low-precision parameters."""
import copy

import pytest
import torch
import torch.nn as nn

import tractable
from tests.tract._reference import reference

LAYERS = {
    "conv2d_bias": lambda: nn.Conv2d(3, 8, 3, padding=1),
    "conv2d_nobias": lambda: nn.Conv2d(3, 8, 3, padding=1, bias=False),
    "linear_bias": lambda: nn.Linear(12, 6),
    "linear_nobias": lambda: nn.Linear(12, 6, bias=False),
    "patch_embed": lambda: nn.Conv2d(3, 16, 4, stride=4),
}
SHAPES = {"conv2d_bias": (8, 3, 8, 8), "conv2d_nobias": (8, 3, 8, 8), "linear_bias": (64, 12),
          "linear_nobias": (64, 12), "patch_embed": (8, 3, 16, 16)}

DEVICES = [("cpu", torch.bfloat16)]
if torch.cuda.is_available():
    DEVICES += [("cuda", torch.float16), ("cuda", torch.bfloat16)]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("device,dtype", DEVICES, ids=[f"{d}-{str(t)[6:]}" for d, t in DEVICES])
def test_autocast_matches_plain_dtype_and_float32_tract(name, device, dtype):
    torch.manual_seed(0)
    base = LAYERS[name]().to(device)
    x = torch.randn(*SHAPES[name], device=device)
    plain = copy.deepcopy(base)
    tr = tractable.TrAct(copy.deepcopy(base), l=0.1)
    ref32 = tractable.TrAct(copy.deepcopy(base), l=0.1)
    with torch.autocast(device_type=device, dtype=dtype):
        out_p = plain(x)
        out_t = tr(x)
    assert out_t.dtype == out_p.dtype == dtype
    assert torch.equal(out_t, out_p)
    R = torch.randn(out_p.shape, device=device)
    (out_t.float() * R).sum().backward()
    (ref32(x) * R).sum().backward()
    g = tr.weight.grad
    assert g.dtype == tr.weight.dtype == torch.float32
    assert torch.isfinite(g).all()
    assert _rel(g, ref32.weight.grad) < 2e-2


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16] + ([torch.float16] if torch.cuda.is_available() else []))
def test_low_precision_parameters(name, dtype):
    device = "cuda" if dtype == torch.float16 else "cpu"
    torch.manual_seed(0)
    base = LAYERS[name]()
    x64 = torch.randn(*SHAPES[name], dtype=torch.float64)
    layer = tractable.TrAct(copy.deepcopy(base).to(device=device, dtype=dtype))
    out = layer(x64.to(device=device, dtype=dtype))
    assert out.dtype == dtype
    R = torch.randn(out.shape, dtype=torch.float64)
    (out * R.to(device=device, dtype=dtype)).sum().backward()
    g = layer.weight.grad
    assert g.dtype == dtype and torch.isfinite(g).all()
    ref = reference(copy.deepcopy(layer).cpu().double(), x64.to(dtype).double(), R.to(dtype).double(), 0.1)[2]
    assert _rel(g.cpu(), ref) < 2e-2


def test_grad_scaler_position_is_irrelevant():
    """P does not depend on the loss scale: scaling the loss scales the TrAct gradient exactly."""
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    a, b = tractable.TrAct(copy.deepcopy(base)), tractable.TrAct(copy.deepcopy(base))
    a(x).square().sum().backward()
    (1024.0 * b(x).square().sum()).backward()
    torch.testing.assert_close(b.weight.grad / 1024.0, a.weight.grad, rtol=1e-12, atol=0)

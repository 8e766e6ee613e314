"""CRATE: parameter counts, the official key layout and strict loading, one layer against an independent float64
implementation of the formulas, patch order, ISTA, attention, position-embedding interpolation, bad inputs."""
import math

import pytest
import torch
import torch.nn as nn

from tractable.models import create_model, first_layer
from tractable.models.crate import (
    CRATE,
    crate_patchify,
    interpolate_pos_embedding,
    ista_step,
    load_crate_checkpoint,
    read_state_dict,
)


def tiny(**kw):
    args = dict(image_size=16, patch_size=4, num_classes=5, dim=24, depth=2, heads=3, in_channels=3)
    args.update(kw)
    return CRATE(**args)


# ------------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("name, count", [("crate_tiny", 6_090_856), ("crate_small", 13_116_328),
                                         ("crate_base", 22_796_008), ("crate_large", 77_641_192)])
def test_preset_parameter_counts(name, count):
    model = create_model(name)  # 224², patch 16, 1000 classes
    assert sum(p.numel() for p in model.parameters()) == count
    depth = model.depth
    assert len(model.state_dict()) == 8 * depth + 12  # no buffers


def _formula(L, d, P, c, N, M):
    return L * (3 * d * d + 5 * d) + (2 * P * P * c + P * P * c * d + 3 * d) + (N + 1) * d + d + (2 * d + d * M + M)


@pytest.mark.parametrize("kw", [dict(image_size=32, patch_size=4, num_classes=10, in_channels=3),
                                dict(image_size=28, patch_size=7, num_classes=100, in_channels=1),
                                dict(image_size=(16, 24), patch_size=8, num_classes=3, in_channels=2)])
def test_count_formula_other_shapes(kw):
    m = tiny(**kw)
    H, W = (kw["image_size"],) * 2 if isinstance(kw["image_size"], int) else kw["image_size"]
    N = (H // kw["patch_size"]) * (W // kw["patch_size"])
    want = _formula(2, 24, kw["patch_size"], kw["in_channels"], N, kw["num_classes"])
    assert sum(p.numel() for p in m.parameters()) == want


@pytest.mark.parametrize("name, classes, count", [("crate_tiny", 10, 5_709_706), ("crate_small", 100, 12_597_028)])
def test_published_head_variants(name, classes, count):
    assert sum(p.numel() for p in create_model(name, num_classes=classes).parameters()) == count


# ------------------------------------------------------------------------------------------------ keys
def official_keys(L, d, inner, P2c, N, M):
    """The official state_dict key → shape table (spec §1.8), written out independently of the model."""
    keys = {"pos_embedding": (1, N + 1, d), "cls_token": (1, 1, d),
            "to_patch_embedding.1.weight": (P2c,), "to_patch_embedding.1.bias": (P2c,),
            "to_patch_embedding.2.weight": (d, P2c), "to_patch_embedding.2.bias": (d,),
            "to_patch_embedding.3.weight": (d,), "to_patch_embedding.3.bias": (d,),
            "mlp_head.0.weight": (d,), "mlp_head.0.bias": (d,), "mlp_head.1.weight": (M, d), "mlp_head.1.bias": (M,)}
    for i in range(L):
        p = f"transformer.layers.{i}"
        keys.update({f"{p}.0.norm.weight": (d,), f"{p}.0.norm.bias": (d,), f"{p}.0.fn.qkv.weight": (inner, d),
                     f"{p}.0.fn.to_out.0.weight": (d, inner), f"{p}.0.fn.to_out.0.bias": (d,),
                     f"{p}.1.norm.weight": (d,), f"{p}.1.norm.bias": (d,), f"{p}.1.fn.weight": (d, d)})
    return keys


def official_state(gen, **kw):
    keys = official_keys(**kw)
    return {k: torch.randn(s, generator=gen) for k, s in keys.items()}


def test_state_dict_matches_the_official_key_table():
    m = create_model("crate_tiny")
    want = official_keys(L=12, d=384, inner=384, P2c=768, N=196, M=1000)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == want


def test_strict_load_of_a_wrapped_official_checkpoint(tmp_path, gen):
    sd = official_state(gen, L=2, d=24, inner=24, P2c=48, N=16, M=5)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "arch": "CRATE_tiny", "best_acc1": 1.0,
                "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    m = load_crate_checkpoint(tiny(), path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k
    m2 = tiny()
    m2.load_state_dict(sd, strict=True)  # the plain official dict loads with torch's own strict loader too
    nested = {"model": {"state_dict": sd}}
    assert read_state_dict(nested).keys() == sd.keys()


def test_renamed_missing_and_unexpected_keys_fail_loudly(gen):
    sd = official_state(gen, L=2, d=24, inner=24, P2c=48, N=16, M=5)
    bad = dict(sd)
    bad["transformer.layers.0.1.fn.D"] = bad.pop("transformer.layers.0.1.fn.weight")
    with pytest.raises(ValueError) as e:
        load_crate_checkpoint(tiny(), bad)
    assert "missing keys (1): transformer.layers.0.1.fn.weight" in str(e.value)
    assert "unexpected keys (1): transformer.layers.0.1.fn.D" in str(e.value)
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    load_crate_checkpoint(m, bad, strict=False)  # explicit opt-out: loads the matching keys only
    assert torch.equal(m.state_dict()["transformer.layers.0.1.fn.weight"],
                       before["transformer.layers.0.1.fn.weight"])
    assert torch.equal(m.state_dict()["cls_token"], sd["cls_token"])


def test_checkpoint_of_another_size_is_a_clear_error(gen):
    small = create_model("crate_small", image_size=32, patch_size=16, num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatches.*transformer\.layers\.0\.0\.fn\.qkv\.weight"):
        load_crate_checkpoint(create_model("crate_tiny", image_size=32, patch_size=16, num_classes=10), small)
    big_res = tiny(image_size=32).state_dict()  # 8×8 grid instead of 4×4
    with pytest.raises(ValueError, match="pos_embedding: checkpoint"):
        load_crate_checkpoint(tiny(), big_res)
    m = load_crate_checkpoint(tiny(), big_res, interpolate_pos=True)
    assert m.pos_embedding.shape == (1, 17, 24)
    assert torch.equal(m.pos_embedding[:, 0], big_res["pos_embedding"][:, 0])


def test_replace_head_touches_only_the_classifier(gen):
    sd = official_state(gen, L=2, d=24, inner=24, P2c=48, N=16, M=1000)
    m = tiny(num_classes=7)
    fresh = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="mlp_head.1.weight"):
        load_crate_checkpoint(tiny(num_classes=7), sd)
    load_crate_checkpoint(m, sd, replace_head=7)
    for k, v in m.state_dict().items():
        if k.startswith("mlp_head.1."):
            assert torch.equal(v, fresh[k]), k
        else:
            assert torch.equal(v, sd[k]), k
    with pytest.raises(ValueError, match="num_classes=9"):
        load_crate_checkpoint(tiny(num_classes=7), sd, replace_head=9)


def test_checkpoint_files_are_read_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------ math
def ref_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ref_crate_layer(z, p, heads, eta=0.1, lam=0.1):
    """One CRATE layer from the paper's formulas, float64, tokens as rows: Z½ = Z + W_out[Σ heads] + b,
    Z' = ReLU(x + η Dᵀ(x − D x) − ηλ) per token (column form), x = LN₂(Z½)."""
    B, n, d = z.shape
    x = ref_layer_norm(z, p["n1w"], p["n1b"])
    U = p["U"]  # (inner, d)
    dh = U.shape[0] // heads
    outs = []
    for k in range(heads):
        Uk = U[k * dh:(k + 1) * dh]  # (dh, d): U_kᵀ applied to columns
        wk = torch.einsum("ed,bnd->bne", Uk, x)
        logits = torch.einsum("bie,bje->bij", wk, wk) / math.sqrt(dh)
        e = torch.exp(logits - logits.max(-1, keepdim=True).values)
        A = e / e.sum(-1, keepdim=True)
        outs.append(torch.einsum("bij,bje->bie", A, wk))
    mssa = torch.einsum("od,bnd->bno", p["Wo"], torch.cat(outs, -1)) + p["bo"]
    half = z + mssa
    x = ref_layer_norm(half, p["n2w"], p["n2b"])
    D = p["D"]
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(n):
            col = x[b, t]
            step = col + eta * D.T @ (col - D @ col) - eta * lam
            out[b, t] = torch.clamp(step, min=0)
    return half, out


@pytest.mark.parametrize("ista_impl, attn_impl", [("fused", "sdpa"), ("reference", "explicit")])
def test_one_layer_equals_the_float64_formula(gen, ista_impl, attn_impl):
    m = tiny(ista_impl=ista_impl, attn_impl=attn_impl, eta=0.3, lam=0.2).double()
    attn, ista = m.transformer.layers[0]
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for ln in (attn.norm, ista.norm):
            ln.weight.copy_(1 + 0.3 * torch.randn(ln.weight.shape, generator=gen, dtype=torch.float64))
            ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=gen, dtype=torch.float64))
    z = torch.randn(2, 17, 24, generator=gen, dtype=torch.float64)
    p = {"n1w": attn.norm.weight, "n1b": attn.norm.bias, "U": attn.fn.qkv.weight, "Wo": attn.fn.to_out[0].weight,
         "bo": attn.fn.to_out[0].bias, "n2w": ista.norm.weight, "n2b": ista.norm.bias, "D": ista.fn.weight}
    p = {k: v.detach() for k, v in p.items()}
    half_ref, out_ref = ref_crate_layer(z, p, heads=3, eta=0.3, lam=0.2)
    with torch.no_grad():
        store = {"mid": [], "out": []}
        out = m.transformer(z, taps=("mid", "out"), store=store, upto=1)
    torch.testing.assert_close(store["mid"][0], half_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)


def test_patch_flatten_order_is_p1_p2_channel():
    """Pixel (c, r, s) of a 2×2-patch image holds 100c + 10r + s; patch (0, 0) must read
    [x(c=0..2, 0, 0), x(c, 0, 1), x(c, 1, 0), x(c, 1, 1)] — channel fastest. The NCHW conv-kernel order
    (c, p1, p2) would give [0, 1, 10, 11, 100, …] instead."""
    C, H, W = 3, 4, 4
    c, r, s = torch.meshgrid(torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    img = (100 * c + 10 * r + s).float().unsqueeze(0)
    patches = crate_patchify(img, 2)
    assert patches.shape == (1, 4, 12)
    assert patches[0, 0].tolist() == [0, 100, 200, 1, 101, 201, 10, 110, 210, 11, 111, 211]
    assert patches[0, 1].tolist()[:3] == [2, 102, 202]  # second patch: the next one along the row
    nchw = img[0, :, 0:2, 0:2].reshape(-1).tolist()
    assert patches[0, 0].tolist() != nchw
    m = tiny(image_size=4, patch_size=2, dim=6, heads=2, depth=1)
    assert torch.equal(m.to_patch_embedding[0](img), patches)


def test_ista_nonnegative_reference_and_no_residual(gen):
    x = torch.randn(4, 9, 16, generator=gen)
    D = torch.randn(16, 16, generator=gen) * 0.3
    fused, ref = ista_step(x, D, 0.1, 0.1, "fused"), ista_step(x, D, 0.1, 0.1, "reference")
    assert (fused >= 0).all() and (ref >= 0).all() and (fused == 0).any()
    closed = torch.relu(x - 0.1 * (x @ D.T - x) @ D - 0.01)  # ReLU(x − η Dᵀ(Dx − x) − ηλ), row form
    torch.testing.assert_close(ref, closed, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-5)
    # D = 0: the block returns ReLU(x − ηλ) exactly — there is no residual around ISTA
    m = tiny()
    with torch.no_grad():
        m.transformer.layers[0][1].fn.weight.zero_()
        z = torch.randn(2, 17, 24, generator=gen)
        store = {"mid": [], "out": []}
        m.transformer(z, taps=("mid", "out"), store=store, upto=1)
        ln = m.transformer.layers[0][1].norm(store["mid"][0])
    assert torch.equal(store["out"][0], torch.relu(ln - 0.1 * 0.1))
    with pytest.raises(ValueError, match="impl"):
        ista_step(x, D, impl="three")


def test_model_outputs_are_nonnegative_and_taps_consistent(gen):
    m = tiny().eval()
    x = torch.randn(3, 3, 16, 16, generator=gen)
    with torch.no_grad():
        f = m.forward_features(x, taps=("qkv", "attn", "mid", "out"))
        logits = m(x)
    assert len(f["out"]) == 2 and all((o >= 0).all() for o in f["out"])
    assert torch.equal(f["final"], f["out"][-1])
    torch.testing.assert_close(m.head(f["final"]), logits, rtol=0, atol=1e-5)
    assert f["qkv"][0].shape == (3, 17, 24) and f["attn"][0].shape == (3, 3, 17, 17)
    torch.testing.assert_close(f["attn"][1].sum(-1), torch.ones(3, 3, 17), rtol=0, atol=1e-6)
    assert (f["attn"][0] >= 0).all()
    with pytest.raises(ValueError, match="unknown taps"):
        m.forward_features(x, taps=("q",))


def test_sdpa_and_explicit_attention_agree_forward_and_backward(gen):
    x = torch.randn(2, 3, 16, 16, generator=gen)
    a = tiny(attn_impl="sdpa")
    b = tiny(attn_impl="explicit", ista_impl="reference")
    b.load_state_dict(a.state_dict())
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_pool_options(gen):
    x = torch.randn(2, 3, 16, 16, generator=gen)
    m = tiny(pool="mean").eval()
    with torch.no_grad():
        z = m.forward_features(x)["final"]
        torch.testing.assert_close(m(x), m.mlp_head(z.mean(1)))
        m.pool = "mean_patches"
        torch.testing.assert_close(m(x), m.mlp_head(z[:, 1:].mean(1)))


def test_official_initialisation():
    torch.manual_seed(0)
    m = create_model("crate_tiny")
    assert 0.9 < m.pos_embedding.std() < 1.1 and 0.8 < m.cls_token.std() < 1.2
    D = m.transformer.layers[0][1].fn.weight
    assert D.abs().max() <= math.sqrt(6 / 384) + 1e-6 and D.abs().max() > 0.12
    assert m.transformer.layers[0][0].fn.qkv.bias is None
    v = create_model("crate_tiny", init="vit")
    assert v.pos_embedding.std() < 0.03


# ------------------------------------------------------------------------------------------------ positions
def test_pos_embedding_interpolation_identity_and_shapes(gen):
    pos = torch.randn(1, 1 + 16, 8, generator=gen)
    same = interpolate_pos_embedding(pos, (4, 4), (4, 4))
    torch.testing.assert_close(same, pos, rtol=0, atol=1e-6)
    assert interpolate_pos_embedding(pos, (4, 4), (6, 3)).shape == (1, 19, 8)
    assert interpolate_pos_embedding(pos, (4, 4), (8, 8), dino_compat=True).shape == (1, 65, 8)

    m = tiny().eval()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        direct = m(x)
        forced = m.head(m.transformer(torch.cat([m.cls_token.expand(2, -1, -1), m.to_patch_embedding(x)], 1)
                                      + interpolate_pos_embedding(m.pos_embedding, m.grid, m.grid)))
        torch.testing.assert_close(direct, forced, rtol=0, atol=1e-5)
        assert m(torch.randn(2, 3, 32, 24, generator=gen)).shape == (2, 5)  # larger, non-square
        small = m.embed(torch.zeros(1, 3, 8, 8))  # smaller: interpolated, not the first rows sliced
    want = interpolate_pos_embedding(m.pos_embedding, (4, 4), (2, 2))
    ref = m.to_patch_embedding(torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(small[:, 1:], ref + want[:, 1:])
    assert not torch.allclose(small[:, 1:], ref + m.pos_embedding[:, 1:5])


# ------------------------------------------------------------------------------------------------ contract
def test_tract_layer_is_the_patch_embedding_linear():
    m = create_model("crate_tiny", image_size=32, patch_size=4, num_classes=10)
    path, layer = first_layer(m)
    assert path == "to_patch_embedding.2" and isinstance(layer, nn.Linear) and layer.in_features == 48


def test_bad_inputs_are_clear_errors(gen):
    with pytest.raises(ValueError, match="image_size=30×30 must be a multiple of patch_size=4"):
        create_model("crate_tiny", image_size=30, patch_size=4)
    m = tiny()
    with pytest.raises(ValueError, match="expected 3 input channels"):
        m(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="multiples of patch_size=4"):
        m(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="pool must be one of"):
        tiny(pool="max")
    with pytest.raises(ValueError, match="dim=24 must be divisible by heads=5"):
        tiny(heads=5)
    with pytest.raises(ValueError, match="eta"):
        tiny(eta=-1.0)
    with pytest.raises(ValueError, match="ista_impl"):
        tiny(ista_impl="slow")


@pytest.mark.parametrize("ista_impl", ["fused", "reference"])
def test_bf16_autocast_forward_backward(gen, ista_impl):
    m = tiny(ista_impl=ista_impl)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
        f = m.forward_features(x, taps=("out", "attn"))
    out.float().square().sum().backward()
    assert out.shape == (2, 5) and all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert all((o >= 0).all() for o in f["out"])
    torch.testing.assert_close(out.float(), m(x), rtol=0.1, atol=0.1)

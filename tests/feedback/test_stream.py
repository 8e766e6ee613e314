"""Block-level FA and DFA on protocol models and chains, against BP and hand-written float64 references."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable.feedback as fb
from tractable.models import MLP, create_model
from tractable.models.credit import ClassifierHead, CreditModel, Readout


class LinearStream(CreditModel):
    """A protocol model whose branches are linear maps f_l(h) = h W_lᵀ (so ∂f/∂h = W_l everywhere)."""

    layout = "vec"
    model_name = "linear_stream"

    def __init__(self, d=5, depth=3, classes=4, in_features=6, residual_add=True):
        super().__init__()
        self.residual_add = residual_add
        self.point_shape = (d,)
        self.embed = nn.Linear(in_features, d)
        self.blocks = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(depth))
        self.readout = Readout("identity")
        self.head = ClassifierHead(d, classes, norm=False)
        self._finish_init("none")


def _param_grads(model, x, y, loss_fn=F.cross_entropy):
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_equal(a, b, keys=None, tol=1e-12):
    keys = sorted(a) if keys is None else keys
    for k in keys:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=f"gradient of {k}")


def _data(gen, n=6, shape=(6,), classes=4):
    return torch.randn((n,) + shape, generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


# ------------------------------------------------------------------------------------------------ block FA
@pytest.mark.parametrize("residual_add", [True, False])
def test_block_fa_with_b_equal_branch_weight_is_backprop(residual_add, gen):
    model = LinearStream(residual_add=residual_add).double()
    ref = copy.deepcopy(model)
    fb.convert(model, "fa", granularity="block", seed=0)
    with torch.no_grad():
        for l, blk in enumerate(model.blocks):
            getattr(model.credit, f"B_{l}").copy_(blk.weight)
    x, y = _data(gen)
    _assert_grads_equal(_param_grads(model, x, y), _param_grads(ref, x, y))


def test_block_fa_with_b_equal_branch_jacobian_at_a_point_is_backprop(gen):
    model = create_model("resmlp", in_features=5, dim=6, depth=3, num_classes=4, w2_std=0.3).double()
    ref = copy.deepcopy(model)
    fb.convert(model, "fa", granularity="block", seed=0)
    x, y = _data(gen, n=1, shape=(5,))
    with torch.no_grad():
        _, hs = ref(x, return_hidden=True)
    for l, blk in enumerate(ref.blocks):
        J = torch.autograd.functional.jacobian(lambda h: blk(h), hs[l])[0, :, 0, :]  # J[i, j] = ∂f_i/∂h_j
        with torch.no_grad():
            getattr(model.credit, f"B_{l}").copy_(J)
    _assert_grads_equal(_param_grads(model, x, y), _param_grads(ref, x, y), tol=1e-11)


def test_block_fa_random_b_signal_is_g_plus_gB_and_skip_false_drops_identity(gen):
    x, y = _data(gen)
    for skip in (True, False):
        model = LinearStream().double()
        fb.convert(model, "fa", granularity="block", seed=4, skip=skip)
        grads = _param_grads(model, x, y)
        # closed form, top-down: g_L from the head (exact), g_l = g_{l+1}(I + B_l) (skip) or g_{l+1} B_l
        with torch.no_grad():
            _, hs = model.forward_plain(x, return_hidden=True)
        hL = hs[-1].clone().requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(model.head(model.readout(hL)), y), hL)[0]
        for l in reversed(range(model.depth)):
            torch.testing.assert_close(grads[f"blocks.{l}.weight"], g.T @ hs[l])  # block trained by BP from g
            B = getattr(model.credit, f"B_{l}")
            g = g + g @ B if skip else g @ B
        torch.testing.assert_close(grads["embed.weight"], g.T @ x)


# ------------------------------------------------------------------------------------------------ DFA
def _dfa_reference(model, x, y, loss_fn, opts):
    """Hand-written DFA on a protocol model: e = ∂L/∂logits from the plain forward; every point's local
    loss ⟨p_k, a_k⟩ on the detached stream, with a_k built from e explicitly for its layout."""
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = model.forward_plain(x)
    lg = logits.clone().requires_grad_(True)
    e = torch.autograd.grad(loss_fn(lg, y), lg)[0]
    pts = model.feedback_points()

    def signal(k):
        B = getattr(model.credit, model.credit.sources[k])
        a = e @ B
        shape = (x.shape[0],) + tuple(pts[k].shape)
        if pts[k].layout == "tokens" and opts.get("token_feedback", "broadcast") == "broadcast":
            return a[:, None, :].expand(shape)
        if pts[k].layout == "map" and opts.get("conv_feedback", "full") == "channel_broadcast":
            return a[:, :, None, None].expand(shape)
        return a.reshape(shape)

    def point(h, k):
        if opts.get("placement") == "post_ln":
            if pts[k].layout == "map":
                return (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, keepdim=True, unbiased=False) + 1e-5)
            return F.layer_norm(h, h.shape[-1:])
        return h

    h = model.embed(x)
    total = (point(h, 0) * signal(0)).sum()
    h = h.detach()
    for l, blk in enumerate(model.blocks):
        hn = h + blk(h)
        total = total + (point(hn, l + 1) * signal(l + 1)).sum()
        h = hn.detach()
    total = total + (model.head(model.readout(h)) * e).sum()  # head: exact BP
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


DFA_CASES = [
    ("resmlp", dict(in_features=5, dim=6, depth=3, w2_std=0.3), (5,), {}),
    ("resmlp", dict(in_features=5, dim=6, depth=3, w2_std=0.3), (5,), dict(placement="post_ln")),
    ("vit_mini", dict(image_size=4, patch_size=2, dim=8, heads=2, depth=2, in_channels=1), (1, 4, 4), {}),
    ("vit_mini", dict(image_size=4, patch_size=2, dim=8, heads=2, depth=2, in_channels=1), (1, 4, 4),
     dict(token_feedback="per_token", placement="post_ln")),
    ("small_resnet_credit", dict(image_size=4, width=3, depth=2, in_channels=2), (2, 4, 4), {}),
    ("small_resnet_credit", dict(image_size=4, width=3, depth=2, in_channels=2, preact=True), (2, 4, 4),
     dict(conv_feedback="channel_broadcast", placement="post_ln")),
]


@pytest.mark.parametrize("name,kw,shape,opts", DFA_CASES)
def test_hub_dfa_equals_hand_written_dfa(name, kw, shape, opts, gen):
    model = create_model(name, num_classes=4, **kw).double()
    fb.convert(model, "dfa", seed=3, **opts)
    x, y = _data(gen, n=5, shape=shape)
    loss_fn = lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1)  # any loss: the hub carries ∂L/∂logits
    grads = _param_grads(model, x, y, loss_fn)
    ref = _dfa_reference(model, x, y, loss_fn, opts)
    assert set(grads) == {n for n, _ in model.named_parameters()}  # every parameter gets a gradient
    _assert_grads_equal(grads, ref, tol=1e-10)


def test_dfa_with_b_equal_w_out_is_backprop_at_the_last_hidden_layer(gen):
    # protocol model without a norm between point L and the output Linear
    model = create_model("resmlp", in_features=5, dim=6, depth=3, num_classes=4, terminal_norm=False,
                         w2_std=0.3).double()
    ref = copy.deepcopy(model)
    fb.convert(model, "dfa", seed=0)
    with torch.no_grad():
        model.credit.B_3.copy_(model.head.fc.weight)
    x, y = _data(gen, shape=(5,))
    keys = [k for k in _param_grads(ref, x, y) if k.startswith(("blocks.2.", "head."))]
    _assert_grads_equal(_param_grads(model, x, y), _param_grads(ref, x, y), keys)
    # chain (MLP): the last point is the head's input
    mlp = MLP(6, num_classes=4, hidden=(7, 5)).double()
    ref = copy.deepcopy(mlp)
    fb.convert(mlp, "dfa", seed=0)
    with torch.no_grad():
        mlp.credit.B_2.copy_(mlp.head.weight)
    x, y = _data(gen)
    _assert_grads_equal(_param_grads(mlp, x, y), _param_grads(ref, x, y), ["body.1.weight", "body.1.bias",
                                                                            "head.weight", "head.bias"])


def test_chain_dfa_equals_hand_written_nokland_dfa(gen):
    mlp = MLP(6, num_classes=4, hidden=(7, 5), activation="tanh").double()
    keys = set(mlp.state_dict())
    fb.convert(mlp, "dfa", seed=1)
    assert set(mlp.state_dict()) == keys | {"credit.B_1", "credit.B_2"}
    x, y = _data(gen)
    grads = _param_grads(mlp, x, y)
    W1, b1, W2, b2, W3, b3 = [p.detach() for p in (mlp.fc1.weight, mlp.fc1.bias, mlp.body[1].weight,
                                                   mlp.body[1].bias, mlp.head.weight, mlp.head.bias)]
    a1 = x @ W1.T + b1
    h1 = torch.tanh(a1)
    a2 = h1 @ W2.T + b2
    h2 = torch.tanh(a2)
    logits = h2 @ W3.T + b3
    e = (torch.softmax(logits, -1) - F.one_hot(y, 4)) / x.shape[0]
    d2 = (e @ mlp.credit.B_2) * (1 - h2 ** 2)  # δ_l = (e B_l) ⊙ f′(a_l)
    d1 = (e @ mlp.credit.B_1) * (1 - h1 ** 2)
    ref = {"head.weight": e.T @ h2, "head.bias": e.sum(0), "body.1.weight": d2.T @ h1, "body.1.bias": d2.sum(0),
           "fc1.weight": d1.T @ x, "fc1.bias": d1.sum(0)}
    _assert_grads_equal(grads, ref)


def test_dfa_normalize_and_share_b0(gen):
    model = create_model("resmlp", in_features=5, dim=6, depth=2, num_classes=4).double()
    fb.convert(model, "dfa", seed=0, share_b0=True, normalize="rms_per_sample")
    assert "B_0" not in dict(model.credit.named_buffers()) and model.credit.sources[0] == "B_1"
    x, y = _data(gen, shape=(5,))
    h0 = model.embed(x)
    h0.retain_grad()
    model.zero_grad()
    # the embed's signal: a = g B_1, a / (RMS(a) + 1e-6) / N
    with torch.no_grad():
        lg = model.forward_plain(x)
    lg.requires_grad_(True)
    e = torch.autograd.grad(F.cross_entropy(lg, y), lg)[0]
    a = e @ model.credit.B_1
    a = a / (a.pow(2).mean(1, keepdim=True).sqrt() + 1e-6) / x.shape[0]
    grads = _param_grads(model, x, y)
    torch.testing.assert_close(grads["embed.proj.weight"], a.T @ x)


# ------------------------------------------------------------------------------------------------ modes
@pytest.mark.parametrize("method,opts", [("dfa", {}), ("fa", dict(granularity="block")), ("fa", {})])
def test_no_grad_eval_and_bp_mode_are_the_plain_model(method, opts, gen):
    model = create_model("resmlp", in_features=5, dim=6, depth=2, num_classes=4).double()
    ref = copy.deepcopy(model)
    fb.convert(model, method, seed=0, **opts)
    x, y = _data(gen, shape=(5,))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    out, hs = model(x, return_hidden=True)
    r_out, r_hs = ref(x, return_hidden=True)
    assert torch.equal(out, r_out) and all(torch.equal(a, b) for a, b in zip(hs, r_hs))
    model.eval(), ref.eval()
    _assert_grads_equal(_param_grads(model, x, y), _param_grads(ref, x, y), tol=0)
    model.train(), ref.train()
    with fb.bp_mode(model):
        g_bp = _param_grads(model, x, y)
    _assert_grads_equal(g_bp, _param_grads(ref, x, y), tol=0)
    g_fb = _param_grads(model, x, y)
    assert any(not torch.allclose(g_fb[k], g_bp[k]) for k in g_bp)


@pytest.mark.parametrize("method,opts", [("dfa", {}), ("dfa", dict(normalize="rms_per_sample")),
                                         ("fa", dict(granularity="block")), ("fa", {})])
def test_accumulation_and_two_forwards_one_backward_add_up(method, opts, gen):
    model = create_model("resmlp", in_features=5, dim=6, depth=2, num_classes=4).double()
    fb.convert(model, method, seed=0, **opts)
    x, y = _data(gen, n=8, shape=(5,))
    loss = lambda a, b: F.cross_entropy(model(a), b, reduction="sum")
    model.zero_grad()
    loss(x, y).backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss(x[:4], y[:4]).backward()
    loss(x[4:], y[4:]).backward()
    acc = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (loss(x[:4], y[:4]) + loss(x[4:], y[4:])).backward()
    two = {n: p.grad.clone() for n, p in model.named_parameters()}
    if opts.get("normalize", "none") == "none":  # per-sample normalisation divides by the batch size
        _assert_grads_equal(acc, full, tol=1e-12)
    _assert_grads_equal(two, acc, tol=1e-12)


def test_batchnorm_statistics_updated_once_per_step(gen):
    model = create_model("small_resnet_credit", image_size=4, width=3, depth=2, in_channels=2, num_classes=4)
    ref = copy.deepcopy(model)
    fb.convert(model, "dfa", seed=0)
    x, y = torch.randn(5, 2, 4, 4, generator=gen), torch.randint(0, 4, (5,), generator=gen)
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    for (n, a), (_, b) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(a, b), n


def test_non_reentrant_checkpointed_blocks_give_the_same_dfa_gradients(gen):
    from torch.utils.checkpoint import checkpoint

    model = create_model("resmlp", in_features=5, dim=6, depth=2, num_classes=4).double()
    fb.convert(model, "dfa", seed=0)
    ck = copy.deepcopy(model)
    for blk in ck.blocks:
        fwd = blk.forward
        blk.forward = lambda h, fwd=fwd: checkpoint(fwd, h, use_reentrant=False)
    x, y = _data(gen, shape=(5,))
    _assert_grads_equal(_param_grads(ck, x, y), _param_grads(model, x, y), tol=1e-13)


def test_block_fa_match_branch_scales_b_to_the_branch_jacobian():
    torch.manual_seed(0)
    model = LinearStream(d=16, depth=2).double()
    fb.convert(model, "fa", granularity="block", seed=0, feedback_init="match_branch")
    for l, blk in enumerate(model.blocks):  # linear branch: J = W, so ‖B‖_F should be close to ‖W‖_F
        ratio = float(getattr(model.credit, f"B_{l}").norm() / blk.weight.detach().norm())
        assert 0.7 < ratio < 1.3, ratio
    sd = model.state_dict()
    assert "credit.scale_0" in sd
    fresh = LinearStream(d=16, depth=2).double()
    fb.convert(fresh, "fa", granularity="block", seed=0, feedback_init="match_branch")
    fresh.load_state_dict(sd)
    assert fb.verify_feedback(fresh, sd) == ["credit.B_0", "credit.B_1"]
    vit = create_model("vit_mini", image_size=4, patch_size=2, dim=8, heads=2, depth=1, in_channels=1)
    fb.convert(vit, "fa", granularity="block", feedback_init="match_branch")
    assert float(vit.credit.scale_0) > 0


@pytest.mark.parametrize("name,kw,shape", [
    ("vit_mini", dict(image_size=4, patch_size=2, dim=8, heads=2, depth=2, in_channels=1), (1, 4, 4)),
    ("small_resnet_credit", dict(image_size=4, width=3, depth=2, in_channels=2), (2, 4, 4)),
])
def test_layer_fa_with_b_equal_w_on_protocol_models_is_backprop(name, kw, shape, gen):
    model = create_model(name, num_classes=4, **kw).double()
    ref = copy.deepcopy(model)
    fb.convert(model, "fa", seed=0)
    layers = fb.fa_layers(model)
    assert len(layers) == sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in ref.modules())
    x, y = _data(gen, n=3, shape=shape)
    g_fa = _param_grads(model, x, y)
    with torch.no_grad():
        for _, m in layers:
            m.feedback.copy_(m.weight)
    assert any(not torch.allclose(g_fa[k], v) for k, v in _param_grads(model, x, y).items())
    _assert_grads_equal(_param_grads(model, x, y), _param_grads(ref, x, y), tol=1e-11)


def test_normgrad_and_bridge_normalisation_closed_form(gen):
    for layout, shape, positions in [("vec", (4, 6), 1), ("tokens", (4, 3, 6), 3), ("map", (4, 6, 2, 2), 4)]:
        h = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        (gh,) = torch.autograd.grad(fb.NormGrad.apply(h, layout, "rms_per_sample"), h, g)
        rms = g.reshape(4, -1).pow(2).mean(1).sqrt().view((4,) + (1,) * (len(shape) - 1))
        torch.testing.assert_close(gh, g / (rms + 1e-6) / (4 * positions))
        (gh,) = torch.autograd.grad(fb.NormGrad.apply(h, layout, "dim"), h, g)
        torch.testing.assert_close(gh, g / 6 ** 0.5)
        f = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
        B = torch.randn(6, 6, generator=gen, dtype=torch.float64)
        gf, gh = torch.autograd.grad(fb.FABridge.apply(f, h, B, layout, "none"), (f, h), g)
        gB = torch.einsum("nc...,cd->nd...", g, B) if layout == "map" else g @ B
        torch.testing.assert_close(gf, g)
        torch.testing.assert_close(gh, gB)


def test_train_head_dfa_and_uniform_dim_init(gen):
    model = create_model("resmlp", in_features=5, dim=6, depth=2, num_classes=4, terminal_norm=False).double()
    fb.convert(model, "dfa", seed=0, train_head="dfa", feedback_init="uniform_dim", feedback_scale=2.0)
    assert float(model.credit.B_1.abs().max()) <= 2.0 / 6 ** 0.5
    assert model.credit.B_head.shape == (4, 4)
    x, y = _data(gen, shape=(5,))
    grads = _param_grads(model, x, y)
    with torch.no_grad():
        lg, hs = model.forward_plain(x, return_hidden=True)
    lg.requires_grad_(True)
    e = torch.autograd.grad(F.cross_entropy(lg, y), lg)[0]
    e_head = e @ model.credit.B_head  # the output layer is driven by a projected error too
    torch.testing.assert_close(grads["head.fc.weight"], e_head.T @ hs[-1])
    torch.testing.assert_close(grads["head.fc.bias"], e_head.sum(0))


@pytest.mark.parametrize("make,method,opts", [
    (lambda: MLP(16, num_classes=4, hidden=(8, 8)), "dfa", {}),
    (lambda: MLP(16, num_classes=4, hidden=(8, 8)), "fa", {}),
    (lambda: create_model("resmlp", in_features=16, dim=8, depth=2, num_classes=4), "dfa", dict(placement="post_ln")),
    (lambda: create_model("resmlp", in_features=16, dim=8, depth=2, num_classes=4), "fa", dict(granularity="block")),
])
def test_torch_compile_gives_the_same_gradients(make, method, opts, gen):
    model = make()
    fb.convert(model, method, seed=0, **opts)
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    x, y = torch.randn(5, 16, generator=gen), torch.randint(0, 4, (5,), generator=gen)
    F.cross_entropy(compiled(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)

"""convert(): equivalence with plain models at every point, gradients, BN recompute, export, checkpoints,
every module kind, regulariser, layerwise / multi-sample draws, optimiser helpers and bad inputs."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

import tractable.subspace as ts
from tests.subspace._models import BNCNN, MHAOnly, MHAText, tiny_vit


def _make(cls=BNCNN, seed=0, **kw):
    torch.manual_seed(seed)
    model = cls()
    return model, ts.convert(model, cls, **kw)


def _plain_with(sub, index_or_coeffs):
    """A fresh plain model whose weights are built by hand (float64 → param dtype) from the stored points."""
    plain = sub.model_fn()
    sd = {k: v for k, v in sub.model.state_dict().items() if ".parametrizations." not in f".{k}"}
    for name in sub.tensor_names():
        pts = [sub.endpoint(name, i).detach() for i in range(sub.K)]
        if isinstance(index_or_coeffs, int):
            sd[name] = pts[index_or_coeffs].clone()
        else:
            sd[name] = sum(c * p.double() for c, p in zip(index_or_coeffs, pts)).float()
    plain.load_state_dict(sd, strict=True)
    return plain


X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind,k", [("line", None), ("curve", None), ("simplex", 4)])
def test_each_stored_point_equals_its_plain_model_exactly(kind, k):
    model, sub = _make(kind=kind, k=k)
    corners = [0.0, 1.0] if kind != "simplex" else [[float(i == j) for j in range(k)] for i in range(k)]
    index = [0, sub.K - 1] if kind != "simplex" else list(range(k))
    for point, i in zip(corners, index):
        sub.set_point(point)
        plain = _plain_with(sub, i)
        model.train(), plain.train()
        assert torch.equal(model(X), plain(X))  # train-mode BN, also updates running stats identically
        model.eval(), plain.eval()
        assert torch.equal(model(X), plain(X))
        mb = dict(model.named_buffers())
        for n, b in plain.named_buffers():
            assert torch.equal(mb[n], b), n


@pytest.mark.parametrize("kind,k,point", [("line", None, 0.3), ("curve", None, 0.7), ("simplex", 3, [0.2, 0.5, 0.3])])
def test_export_equals_subspace_model_and_weights_follow_the_geometry(kind, k, point):
    model, sub = _make(kind=kind, k=k)
    model.eval()
    plain = sub.export(point)
    assert list(plain.state_dict()) == list(BNCNN().state_dict())
    sub.set_point(point)
    plain.eval()
    assert torch.equal(model(X), plain(X))
    coeffs = ts.point_coeffs(kind, sub.K, point)
    ref = _plain_with(sub, coeffs.tolist())  # float64 formula Σ c_i ω_i
    for (n, a), (_, b) in zip(plain.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), n


def test_line_is_exactly_linear_and_curve_is_bezier():
    model, sub = _make(kind="line")
    w0, w1 = (sub.endpoint("conv1.weight", i).detach().double() for i in range(2))
    for a in (0.0, 0.25, 0.6, 1.0):
        w = sub.export(a).conv1.weight.double()
        assert torch.allclose(w, (1 - a) * w0 + a * w1, atol=1e-7, rtol=0)
    model, sub = _make(kind="curve")
    s, c, e = (sub.endpoint("fc.weight", i).detach().double() for i in range(3))
    for a in (0.0, 0.25, 0.5, 0.9, 1.0):
        w = sub.export(a).fc.weight.double()
        assert torch.allclose(w, (1 - a) ** 2 * s + 2 * a * (1 - a) * c + a ** 2 * e, atol=1e-7, rtol=0)


@pytest.mark.parametrize("kind,point", [("line", 0.25), ("curve", 0.25)])
def test_gradient_split_is_exact(kind, point):
    model, sub = _make(kind=kind)
    sub.set_point(point)
    coeffs = ts.point_coeffs(kind, sub.K, point)  # 0.25 → exactly representable coefficients
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))
    F.cross_entropy(model(X), y).backward()
    plain = sub.export(point)
    plain.train()
    F.cross_entropy(plain(X), y).backward()
    for name in ("conv1.weight", "bn1.weight", "bn2.bias", "fc.weight", "conv2.bias"):
        g = dict(plain.named_parameters())[name].grad
        assert g.abs().sum() > 0
        for i in range(sub.K):
            got = sub.endpoint_grad(name, i)
            assert torch.equal(got, g * float(coeffs[i])), (name, i)


def test_bn_recompute_matches_update_bn_on_the_exported_network():
    model, sub = _make(kind="line")
    batches = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(s)), torch.zeros(8)) for s in range(3)]
    sub.set_point(0.0)
    sub.recompute_bn(batches)
    stats0 = ts.bn_buffers(model)
    sub.set_point(0.5)
    assert sub.recompute_bn(batches, num_batches=3) == 3
    plain = sub.export(0.5)
    plain.train()
    for m in plain.modules():  # start from the training-time state: update_bn must reset it
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
    update_bn([b[0] for b in batches], plain)
    for (n, m), (_, p) in zip(((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)),
                              ((n, m) for n, m in plain.named_modules() if isinstance(m, nn.BatchNorm2d))):
        assert torch.allclose(m.running_mean, p.running_mean, atol=1e-6), n
        assert torch.allclose(m.running_var, p.running_var, atol=1e-6), n
        assert not torch.allclose(m.running_mean, stats0[n]["running_mean"])  # α = 0 differs from α = 0.5
        assert m.momentum == 0.1
    # the cache round-trips bit-exactly and export uses it
    mid = ts.bn_buffers(model)
    sub.load_bn(0.0)
    assert torch.equal(model.bn1.running_mean, stats0["bn1"]["running_mean"])
    sub.load_bn(0.5)
    assert all(torch.equal(model.get_submodule(n).running_var, b["running_var"]) for n, b in mid.items())
    sub.set_point(0.0)
    assert torch.equal(sub.export(0.5).bn2.running_mean, mid["bn2"]["running_mean"])
    with pytest.raises(KeyError, match="recompute_bn first"):
        sub.load_bn(0.3)


@pytest.mark.parametrize("cls,inp", [
    (tiny_vit, lambda: torch.randn(4, 3, 8, 8)),
    (MHAText, lambda: torch.randint(0, 20, (4, 5))),
    (MHAOnly, lambda: torch.randn(4, 5, 8)),
], ids=["vit_explicit_attention", "mha_encoder_embedding", "multihead_attention"])
def test_every_module_kind_converts_and_trains_every_endpoint(cls, inp):
    torch.manual_seed(0)
    model = cls()
    names = [n for n, p in model.named_parameters()]
    sub = ts.convert(model, cls, kind="curve")
    assert sorted(sub.tensor_names()) == sorted(names)
    x = inp()
    sub.set_point(0.4)
    model.train()
    model(x).square().sum().backward()
    for p in sub.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for mode in (True, False):  # eval: TransformerEncoderLayer's fast path reads the parametrized weights
        model.train(mode)
        plain = sub.export(0.4)
        plain.train(mode)
        with torch.no_grad():
            assert torch.allclose(model(x), plain(x), atol=1e-6)
    if cls is MHAText:
        assert any(n.startswith("embed.parametrizations.weight") for n, _ in model.named_parameters())
        assert any("in_proj_weight" in n for n in sub.tensor_names())


def test_checkpoint_round_trip_is_strict_and_exact(tmp_path):
    model, sub = _make(kind="simplex", k=3)
    sub.sample(torch.Generator().manual_seed(0))
    model(X).sum().backward()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(RuntimeError, match="state_dict"):
        torch.save(model, tmp_path / "model.pt")
    fresh, sub2 = _make(kind="simplex", k=3, seed=7)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True), strict=True)
    for point in ([1.0, 0.0, 0.0], [0.2, 0.3, 0.5]):
        sub.set_point(point), sub2.set_point(point)
        model.eval(), fresh.eval()
        assert torch.equal(model(X), fresh(X))
    assert "coeffs" not in " ".join(model.state_dict())  # the point is not part of the checkpoint
    with pytest.raises(RuntimeError):
        _make(kind="line")[0].load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True), strict=True)


def test_checkpoints_of_the_unstacked_layout_still_load_strictly():
    """tractable's first layout stored K tensors ``original0`` … ``original{K-1}``; they load into the stacked one."""
    model, sub = _make(kind="curve")
    sd = model.state_dict()
    old = {}
    for k, v in sd.items():
        if k.endswith(".original"):
            old.update({f"{k}{i}": v[i].clone() for i in range(v.shape[0])})
        else:
            old[k] = v.clone()
    assert any(k.endswith("original2") for k in old) and not any(k.endswith(".original") for k in old)
    fresh, sub2 = _make(kind="curve", seed=5)
    fresh.load_state_dict(old, strict=True)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_plain_checkpoint_import():
    torch.manual_seed(3)
    pretrained = BNCNN()
    model, sub = _make(kind="line")
    fresh_end = sub.endpoint("fc.weight", 1).detach().clone()
    sub.load_plain_state_dict(pretrained.state_dict(), endpoints="first")
    assert torch.equal(sub.endpoint("fc.weight", 0), pretrained.fc.weight)
    assert torch.equal(sub.endpoint("fc.weight", 1), fresh_end)
    sub.load_plain_state_dict(pretrained.state_dict(), endpoints="all")
    assert torch.equal(sub.endpoint("conv1.weight", 1), pretrained.conv1.weight)
    assert sub.regularizer(2.0).item() == pytest.approx(2.0, rel=1e-5)


def test_regularizer_matches_float64_concatenation():
    model, sub = _make(kind="simplex", k=3)
    regs = [n for n in sub.tensor_names() if sub.endpoint(n, 0).dim() >= 2]
    assert regs == ["conv1.weight", "conv2.weight", "fc.weight"]  # BN and biases excluded

    def cos2(i, j):
        a = torch.cat([sub.endpoint(n, i).detach().double().flatten() for n in regs])
        b = torch.cat([sub.endpoint(n, j).detach().double().flatten() for n in regs])
        return float((a @ b) ** 2 / ((a @ a) * (b @ b)))

    g = torch.Generator().manual_seed(4)
    i, j = sorted(torch.randperm(3, generator=torch.Generator().manual_seed(4))[:2].tolist())
    assert sub.regularizer(0.7, generator=g).item() == pytest.approx(0.7 * cos2(i, j), rel=1e-5)
    allp = sub.regularizer(1.0, pairs="all")
    assert allp.item() == pytest.approx((cos2(0, 1) + cos2(0, 2) + cos2(1, 2)) / 3, rel=1e-5)
    assert allp.item() < 0.05  # independent initialisation: nearly orthogonal
    assert sub.stats()["cos2_mean"] == pytest.approx(allp.item(), rel=1e-5)
    allp.backward()
    for n in regs:
        assert all(sub.endpoint_grad(n, i).abs().sum() > 0 for i in range(3))
    assert sub.endpoint_grad("bn1.weight", 0) is None
    with pytest.raises(ValueError, match="pass generator="):
        sub.regularizer(1.0)
    with pytest.raises(ValueError, match="beta: .* >= 0"):
        sub.regularizer(-1.0)
    line_model, line = _make(kind="line")
    assert line.regularizer(1.0).item() == line.regularizer(1.0).item()  # deterministic without a generator
    with torch.no_grad():
        for n in line.tensor_names():
            line.endpoint(n, 1).copy_(line.endpoint(n, 0))
    assert line.regularizer(0.5).item() == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("host", [True, False], ids=["host_scalars", "device_scalars"])
@pytest.mark.parametrize("pairs", [((0, 1),), ((0, 2),), ((0, 1), (0, 2), (1, 2))])
def test_cos2_value_and_backward_match_autograd_in_float64(pairs, host, monkeypatch):
    """cos2 (forward and hand-written backward) against autograd on the float64 formula over the concatenated
    stored points, and added to the mixing gradient c ⊗ ∂L/∂w by autograd. Both scalar paths: Python floats
    (CPU) and device tensors (the CUDA path, forced here on the CPU)."""
    import importlib

    from tractable.subspace.parametrization import mix

    reg = importlib.import_module("tractable.subspace.regularizer")
    monkeypatch.setattr(reg, "_host_scalars", lambda device: host)

    g = torch.Generator().manual_seed(0)
    st = [torch.randn(3, *s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((3, 4), (5,))]
    assert torch.autograd.gradcheck(lambda *t: reg.cos2(t, pairs, 0.7), st)

    def ref(*t):
        flat = torch.cat([x.reshape(3, -1) for x in t], 1)
        return 0.7 * torch.stack([(flat[i] @ flat[j]) ** 2 / ((flat[i] @ flat[i]) * (flat[j] @ flat[j]))
                                  for i, j in pairs]).mean()

    want = torch.autograd.grad(ref(*st), st)
    value = reg.cos2(st, pairs, 0.7)
    assert torch.allclose(value, ref(*st), rtol=1e-12)
    for a, b in zip(torch.autograd.grad(value, st), want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    c = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    loss = sum((mix(t, c) ** 2).sum() for t in st) + reg.cos2(st, pairs, 0.7)
    for t, a, b in zip(st, torch.autograd.grad(loss, st), want):
        w = (c.view(3, *[1] * (t.dim() - 1)) * t).sum(0)
        assert torch.allclose(a, b + c.view(3, *[1] * (t.dim() - 1)) * 2 * w, rtol=1e-10, atol=1e-14)


def test_layerwise_draws_are_per_module_and_shared_within_a_module():
    model, sub = _make(kind="line", layerwise=True)
    c = sub.sample(torch.Generator().manual_seed(0))
    assert c.shape == (sub.num_groups, 2) == (5, 2)
    assert len({round(float(r[1]), 9) for r in c}) == 5
    assert torch.equal(model.conv2.parametrizations.weight[0].coeffs, model.conv2.parametrizations.bias[0].coeffs)
    assert not torch.equal(model.conv1.parametrizations.weight[0].coeffs, model.fc.parametrizations.weight[0].coeffs)
    g = torch.Generator().manual_seed(0)
    _, glob = _make(kind="simplex", k=3)
    t = glob.sample(g)
    assert t.shape == (3,) and abs(float(t.sum()) - 1) < 1e-12
    assert all(torch.equal(e.endpoints.coeffs, t.float()) for e in glob._entries)


def test_num_samples_splits_the_batch_with_one_point_per_chunk():
    model, sub = _make(kind="line", num_samples=3)
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))
    draws = sub.sample(torch.Generator().manual_seed(9))
    assert draws.shape == (3, 2)
    model.train()
    F.cross_entropy(model(X), y).backward()
    got = [p.grad.clone() for p in sub.parameters()]
    ref_model, ref = _make(kind="line")
    ref_model.train()
    for s, (xs, ys) in enumerate(zip(X.tensor_split(3), y.tensor_split(3))):
        ref.set_coeffs(draws[s])
        (F.cross_entropy(ref_model(xs), ys) / 3).backward()  # mean of the chunk losses
    for a, p in zip(got, ref.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # evaluation forwards are not split
        assert model(X).shape == (6, 5)


def test_optimizer_guard_param_groups_and_export_leaves_the_model_usable():
    torch.manual_seed(0)
    model = BNCNN()
    early = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(X).sum().backward()
    early.step()  # momentum buffers in the plain shapes
    model.zero_grad()
    sub = ts.convert(model, BNCNN, kind="line")
    with pytest.raises(ValueError, match="stepped before convert"):
        sub.check_optimizer(early)
    sub.check_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))  # the same objects, stacked
    with pytest.raises(ValueError, match="not in the model"):
        sub.check_optimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    sub.check_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    no_decay = lambda name, p: name.endswith(".bias") or name.startswith("bn")  # noqa: E731
    groups = sub.param_groups(5e-4, no_decay)
    plain_names = {n for n, p in BNCNN().named_parameters() if no_decay(n, p)}
    got = {sub.canonical_name(n) for n, p in model.named_parameters() if any(p is q for q in groups[1]["params"])}
    assert got == plain_names and len(groups[1]["params"]) == len(plain_names)
    state = torch.get_rng_state()
    sub.export(0.5)
    assert torch.equal(state, torch.get_rng_state())
    model.eval()
    model(X)  # regression: deepcopy + remove_parametrizations would have broken the original's class
    assert isinstance(model.conv1.weight, torch.Tensor)


def test_torch_compile_keeps_one_graph_across_points():
    model, sub = _make(kind="line")
    model.eval()
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend)
    for a in (0.1, 0.5, 0.9):
        sub.set_point(a)
        with torch.no_grad():
            out = compiled(X)
            assert torch.allclose(out, model(X), atol=1e-6)
    assert len(graphs) == 1


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="accepted values: 'line', 'curve', 'simplex'"):
        ts.convert(BNCNN(), BNCNN, kind="plane")
    with pytest.raises(ValueError, match="k >= 2"):
        ts.convert(BNCNN(), BNCNN, kind="simplex", k=1)

    def other():
        return BNCNN(classes=7)

    with pytest.raises(ValueError, match="different architecture.*fc.weight"):
        ts.convert(BNCNN(), other, kind="line")
    with pytest.raises(TypeError, match="model_fn"):
        ts.convert(BNCNN(), BNCNN(), kind="line")
    model, sub = _make(kind="simplex", k=3)
    with pytest.raises(ValueError, match="outside the simplex"):
        sub.set_point([0.7, 0.7, -0.4])
    with pytest.raises(ValueError, match="already a subspace model"):
        ts.convert(model, BNCNN)
    with pytest.raises(ValueError, match="num_samples"):
        ts.convert(BNCNN(), BNCNN, num_samples=0)

    def tied():
        net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        net[1].weight = net[0].weight  # two modules, one Parameter
        return net

    with pytest.raises(ValueError, match="tied"):
        ts.convert(tied(), tied)
    with pytest.raises(RuntimeError, match="cannot be assigned"):
        model.fc.weight = torch.zeros(5, 8)
    with pytest.raises(IndexError, match="outside the 3 stored points of a simplex"):
        sub.endpoint("fc.weight", 3)
    with pytest.raises(KeyError, match="not a subspace parameter"):
        sub.stacked("fc.nothing")
    bad = dict(BNCNN().state_dict())
    bad["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="fc.weight.*shape"):
        sub.load_plain_state_dict(bad)


def test_tract_on_the_first_layer_of_a_subspace_model():
    """TrAct on a subspace layer: the layer's weight is w = Σ c_i ω_i and TrAct replaces ∂L/∂w by
    Ĝ = Gᵀ X (XᵀX/b + λI)⁻¹ (Linear; G the output gradient, X the input, b the batch); the chain rule through
    the parametrization then gives ∂L/∂ω_i = c_i · Ĝ. Reference: float64 formula on the same G and X."""
    import tractable

    torch.manual_seed(0)

    def mlp():
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))

    model = mlp()
    sub = ts.convert(model, mlp, kind="line")
    tractable.TrAct(model[0], l=0.1)
    sub.set_point(0.25)
    x = torch.randn(16, 6, dtype=torch.float32)
    y = torch.randint(0, 3, (16,))
    h = model[0](x)
    h.retain_grad()
    F.cross_entropy(model[2](model[1](h)), y).backward()
    G, X64 = h.grad.double(), x.double()
    b, lam = X64.shape[0], 0.1
    ref = G.T @ X64 @ torch.linalg.inv(X64.T @ X64 / b + lam * torch.eye(6, dtype=torch.float64))
    for i, c in enumerate((0.75, 0.25)):
        assert torch.allclose(sub.endpoint_grad("0.weight", i).double(), c * ref, atol=1e-5, rtol=1e-4)
    # the bias and the other layer keep ordinary gradients
    plain = sub.export(0.25)
    F.cross_entropy(plain(x), y).backward()
    assert torch.allclose(sub.endpoint_grad("2.weight", 1), 0.25 * plain[2].weight.grad, atol=1e-7)
    assert torch.allclose(sub.endpoint_grad("0.bias", 0), 0.75 * plain[0].bias.grad, atol=1e-7)


def test_the_regularizer_has_one_gradient_route_before_after_or_apart_from_the_forward():
    """The regulariser's gradient S·E reaches the stored points directly; autograd adds it to c ⊗ ∂L/∂w. Its
    place relative to the forward (before, after, or a separate backward) changes nothing, bit for bit."""
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))
    grads = {}
    for mode in ("after", "before", "two_calls"):
        model, sub = _make(kind="simplex", k=3)
        model.train()
        sub.set_point([0.2, 0.5, 0.3])
        if mode == "before":
            reg = sub.regularizer(0.8, pairs="all")
        loss = F.cross_entropy(model(X), y)
        if mode != "before":
            reg = sub.regularizer(0.8, pairs="all")
        assert reg.grad_fn is not None
        if mode == "two_calls":
            loss.backward()
            reg.backward()
        else:
            (loss + reg).backward()
        grads[mode] = {n: sub.stacked(n).grad.clone() for n in sub.tensor_names()}
    for n, g in grads["after"].items():
        assert g.abs().sum() > 0
        for mode in ("before", "two_calls"):
            assert torch.equal(grads[mode][n], g), (mode, n)


def test_regularizer_refuses_points_changed_in_place_before_its_backward():
    model, sub = _make(kind="line")
    reg = sub.regularizer(1.0)
    with torch.no_grad():
        sub.stacked("fc.weight").mul_(1.0)  # an optimizer step between the regulariser and its backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        reg.backward()


def test_two_forwards_at_different_points_share_one_backward():
    """Every point is a new coefficient tensor, so a graph keeps the point it was built at."""
    model, sub = _make(kind="line")
    model.train()
    sub.set_point(0.25)
    a = model(X).square().mean()
    sub.set_point(0.75)
    b = model(X).square().mean()
    (a + b).backward()
    got = {n: sub.stacked(n).grad.clone() for n in sub.tensor_names()}
    ref_model, ref = _make(kind="line")
    ref_model.train()
    for p in (0.25, 0.75):
        ref.set_point(p)
        ref_model(X).square().mean().backward()
    for n in got:
        assert torch.allclose(got[n], ref.stacked(n).grad, rtol=1e-5, atol=1e-7), n


def test_parametrize_cache_and_deep_copies_read_their_own_points():
    import copy

    from torch.nn.utils import parametrize

    model, sub = _make(kind="curve")
    sub.set_point(0.3)
    model.eval()
    with torch.no_grad():
        out = model(X)
        with parametrize.cached():  # parametrize's own (cached) getter
            assert torch.equal(model(X), out)
        twin = copy.deepcopy(model)
        for p in twin.parameters():
            p.mul_(0.5)
        assert torch.equal(model(X), out)  # the copy shares the parametrized class, not the tensors
        assert not torch.equal(twin(X), out)


@pytest.mark.parametrize("kind,k", [("line", None), ("curve", None), ("simplex", 3)])
def test_one_mixing_node_per_forward_is_bit_identical_to_per_tensor_nodes(kind, k):
    """``mix_all`` (every tensor mixed in one MixAll node by a forward pre-hook) against the per-tensor nodes:
    the same outputs, the same gradients (with the regulariser) bit for bit; the weights of a forward are not
    reused after it (a direct access or a new point recomputes them)."""
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))
    res = {}
    for mode in (True, False):
        model, sub = _make(kind=kind, k=k)
        sub.mix_all = mode
        model.train()
        g = torch.Generator().manual_seed(3)
        sub.sample(g)
        out = model(X)
        loss = F.cross_entropy(out, y) + sub.regularizer(0.5, generator=g)
        loss.backward()
        res[mode] = (out.detach(), {n: sub.stacked(n).grad.clone() for n in sub.tensor_names()})
        if mode:
            assert all(e.endpoints._now is None for e in sub._entries)  # cleared after the forward
            sub.set_point(sub.canonical_point())
            with torch.no_grad():
                assert torch.equal(model.fc.weight, sub.export().fc.weight)
    assert torch.equal(res[True][0], res[False][0])
    for n, gr in res[False][1].items():
        assert torch.equal(res[True][1][n], gr), n


def test_compiled_training_step_matches_eager():
    """torch.compile (eager backend) of a subspace model in training: the hook sees tracing and leaves the
    per-tensor path to the compiled graph; gradients (with the regulariser) equal the eager ones."""
    def mk():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    torch.manual_seed(0)
    m = mk()
    sub = ts.convert(m, mk, kind="line")
    cm = torch.compile(m, backend="eager")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(2))
    for i in range(2):
        sub.sample(torch.Generator().manual_seed(i))
        (F.cross_entropy(cm(x), y) + sub.regularizer(1.0)).backward()
        got = {n: sub.stacked(n).grad.clone() for n in sub.tensor_names()}
        m.zero_grad()
        (F.cross_entropy(m(x), y) + sub.regularizer(1.0)).backward()
        for n, g in got.items():
            assert torch.allclose(g, sub.stacked(n).grad, atol=1e-6), n
        m.zero_grad()

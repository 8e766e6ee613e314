"""compat="seed" equals the reference code's per-block local-loss loop (re-implemented here from its description:
one optimizer per block plus embed and head, no-grad forward, top-down local losses ⟨f_l, a/RMS(a)⟩)."""
import copy

import torch
import torch.nn.functional as F

import tractable.feedback as fb
from tractable.models import create_model

N, STEPS = 8, 5


def _model():
    torch.manual_seed(0)
    return create_model("resmlp", in_features=12, dim=8, depth=3, num_classes=5, w2_std=0.1)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(N, 12, generator=g), torch.randint(0, 5, (N,), generator=g)) for _ in range(STEPS)]


def _rms_normalise(a):
    return a / ((a ** 2).mean(-1, keepdim=True).sqrt() + 1e-6)


def _seed_optimizers(model):
    mk = lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)
    return mk(model.embed.parameters()), [mk(b.parameters()) for b in model.blocks], mk(model.head.parameters())


def _seed_fa_step(model, opts, Bs, x, y):
    embed_opt, block_opts, head_opt = opts
    with torch.no_grad():
        _, hs = model.forward_plain(x, return_hidden=True)
    hL = hs[-1].detach().requires_grad_(True)
    head_opt.zero_grad()
    F.cross_entropy(model.head(model.readout(hL)), y).backward()
    a = hL.grad.detach()
    head_opt.step()
    for l in reversed(range(len(model.blocks))):
        f = model.blocks[l](hs[l].detach())
        block_opts[l].zero_grad()
        (f * _rms_normalise(a)).sum(-1).mean().backward()
        block_opts[l].step()
        a = a @ Bs[l]  # no identity term
    embed_opt.zero_grad()
    (model.embed(x) * _rms_normalise(a)).sum(-1).mean().backward()
    embed_opt.step()


def _seed_dfa_step(model, opts, Bs, x, y):
    embed_opt, block_opts, head_opt = opts
    with torch.no_grad():
        logits, hs = model.forward_plain(x, return_hidden=True)
        e = logits.softmax(-1)
        e[torch.arange(x.shape[0]), y] -= 1  # hand-made error, unreduced
    hL = hs[-1].detach()
    head_opt.zero_grad()
    F.cross_entropy(model.head(model.readout(hL)), y).backward()
    head_opt.step()
    grads = {}
    for l in range(len(model.blocks)):
        f = model.blocks[l](hs[l].detach())
        block_opts[l].zero_grad()
        (f * _rms_normalise(e @ Bs[l].T)).sum(-1).mean().backward()
        grads.update({f"blocks.{l}.{n}": p.grad.clone() for n, p in model.blocks[l].named_parameters()})
        block_opts[l].step()
    embed_opt.zero_grad()
    (model.embed(x) * _rms_normalise(e @ Bs[0].T)).sum(-1).mean().backward()  # B_0 again
    grads.update({f"embed.{n}": p.grad.clone() for n, p in model.embed.named_parameters()})
    embed_opt.step()
    return grads


def _ours(method):
    model = _model()
    seed_model = copy.deepcopy(model)
    fb.convert(model, method, seed=42, compat="seed")
    return model, seed_model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def test_compat_seed_fa_equals_the_per_block_loop_exactly():
    model, seed_model, opt = _ours("fa")
    o = model.feedback_options
    assert (o.granularity, o.skip, o.normalize) == ("block", False, "rms_per_sample")
    Bs = [getattr(model.credit, f"B_{l}") for l in range(model.depth)]
    seed_opts = _seed_optimizers(seed_model)
    for x, y in _batches():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()  # one optimizer, one backward
        opt.step()
        _seed_fa_step(seed_model, seed_opts, Bs, x, y)
    for (n, p), (_, q) in zip(model.named_parameters(), seed_model.named_parameters()):
        assert torch.equal(p, q), f"{n}: max |Δθ| = {(p - q).abs().max():.3g}"


def test_compat_seed_dfa_matches_the_per_block_loop():
    model, seed_model, opt = _ours("dfa")
    o = model.feedback_options
    assert (o.share_b0, o.normalize, o.placement) == (True, "rms_per_sample", "pre_ln")
    Bs = [getattr(model.credit, f"B_{l + 1}").T for l in range(model.depth)]  # seed layout d × C
    seed_opts = _seed_optimizers(seed_model)
    for step, (x, y) in enumerate(_batches()):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ours = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        ref = _seed_dfa_step(seed_model, seed_opts, Bs, x, y)
        for n, g in ref.items():  # the 1e-6 sits on the RMS of e (seed) vs of e/N (hub): ≈ N·1e-6/RMS relative
            rel = float((ours[n] - g).norm() / g.norm())
            assert rel <= 3e-4, f"step {step}, {n}: relative gradient difference {rel:.2e}"
    for (n, p), (_, q) in zip(model.named_parameters(), seed_model.named_parameters()):
        assert float((p - q).detach().abs().max()) <= 1e-5, n

"""Feedback matrices (deterministic, persistent, verifiable) and clear errors for bad inputs."""
import io
import zlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable.feedback as fb
from tractable.models import MLP, create_model


def _resmlp(**kw):
    return create_model("resmlp", in_features=5, dim=6, depth=2, num_classes=4, **kw)


def test_stable_seed_is_crc32_based_and_process_independent():
    assert fb.stable_seed(0, "point.1") == zlib.crc32(b"point.1")
    assert fb.stable_seed(1, "a") != fb.stable_seed(1, "b") != fb.stable_seed(2, "b")
    assert fb.stable_seed(1, "a", step=1) != fb.stable_seed(1, "a")


@pytest.mark.parametrize("method,opts", [("dfa", {}), ("fa", dict(granularity="block")), ("fa", {}),
                                         ("frsf", {})])
def test_matrices_are_buffers_independent_of_global_rng_and_order(method, opts):
    torch.manual_seed(0)
    a = _resmlp()
    b = _resmlp()
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    fb.convert(a, method, seed=5, **opts)
    torch.manual_seed(2)
    torch.randn(100)
    fb.convert(b, method, seed=5, **opts)
    fa, fbm = fb.feedback_tensors(a), fb.feedback_tensors(b)
    assert fa and list(fa) == list(fbm) and all(torch.equal(fa[k], fbm[k]) for k in fa)
    assert all(k in a.state_dict() for k in fa)
    assert not any(n in fa for n, _ in a.named_parameters())
    assert fb.feedback_checksum(a) == fb.feedback_checksum(b)
    c = _resmlp()
    fb.convert(c, method, seed=6, **opts)
    assert fb.feedback_checksum(c) != fb.feedback_checksum(a)


def test_save_load_round_trip_and_verify_against_checkpoint():
    model = _resmlp()
    fb.convert(model, "dfa", seed=3)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    sd = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = _resmlp()
    fb.convert(fresh, "dfa", seed=3)
    fresh.load_state_dict(sd, strict=True)
    assert fb.verify_feedback(fresh, sd) == ["credit.B_0", "credit.B_1", "credit.B_2"]
    sd["credit.B_1"] = sd["credit.B_1"] + 1e-3
    with pytest.raises(fb.FeedbackMismatch, match="credit.B_1.*differs from its regeneration"):
        fb.verify_feedback(fresh, sd)
    sd["credit.B_1"] = sd["credit.B_1"] - 1e-3
    other = _resmlp()
    fb.convert(other, "dfa", seed=4)
    with pytest.raises(fb.FeedbackMismatch, match="another seed"):
        fb.verify_feedback(other, fresh.state_dict())
    sd = fresh.state_dict()
    del sd["credit.B_2"]
    with pytest.raises(fb.FeedbackMismatch, match="no feedback matrix 'credit.B_2'"):
        fb.verify_feedback(fresh, sd)


def test_wrong_shape_b_in_a_checkpoint_is_a_clear_error():
    small = _resmlp()
    fb.convert(small, "dfa", seed=0)
    sd = small.state_dict()
    sd["credit.B_1"] = torch.zeros(4, 7)
    with pytest.raises(RuntimeError, match=r"feedback matrix 'credit.B_1': the checkpoint has shape \(4, 7\), "
                                           r"the model expects \(4, 6\)"):
        small.load_state_dict(sd)
    with pytest.raises(fb.FeedbackMismatch, match="has shape"):
        fb.verify_feedback(small, sd)
    lin = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    fb.convert(lin, "fa")
    sd = lin.state_dict()
    sd["0.feedback"] = torch.zeros(4, 2)
    with pytest.raises(RuntimeError, match=r"feedback matrix '0.feedback'.*expects \(4, 3\)"):
        lin.load_state_dict(sd)


def test_fa_refuses_multihead_attention_and_functional_weights():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

    with pytest.raises(TypeError, match="nn.MultiheadAttention.*attn.*reads in_proj_weight"):
        fb.convert(Net(), "fa")

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.w = nn.Parameter(torch.randn(2, 3))

        def forward(self, x):
            return F.linear(self.fc(x), self.w)

    with pytest.raises(TypeError, match=r"read functionally.*w \(2, 3\).*allow_functional"):
        fb.convert(Functional(), "fa")
    m = fb.convert(Functional(), "fa", allow_functional=["w"])
    assert fb.is_fa_layer(m.fc)
    with pytest.raises(ValueError, match="already converted"):
        fb.convert(m, "fa")


def test_bad_options_name_the_option_and_the_accepted_values():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'placment'.*valid options:.*placement"):
        fb.convert(_resmlp(), "dfa", placment="post_ln")
    with pytest.raises(ValueError, match="placement must be one of 'pre_ln', 'post_ln'; got 'middle'"):
        fb.convert(_resmlp(), "dfa", placement="middle")
    with pytest.raises(ValueError, match="'placement'.* do not apply to layer-level FA"):
        fb.convert(_resmlp(), "fa", placement="post_ln")
    with pytest.raises(ValueError, match="method must be one of"):
        fb.convert(_resmlp(), "bp")
    with pytest.raises(ValueError, match="granularity='block' exists for method='fa' only"):
        fb.convert(_resmlp(), "kp", granularity="block")
    with pytest.raises(ValueError, match="feedback_scale must be a finite number > 0"):
        fb.convert(_resmlp(), "dfa", feedback_scale=0)
    with pytest.raises(ValueError, match="feedback_init for dfa feedback must be one of 'readout', 'normal', 'uniform_dim'"):
        fb.convert(_resmlp(), "dfa", feedback_init="kaiming_uniform")
    with pytest.raises(ValueError, match="skip must be True or False"):
        fb.convert(_resmlp(), "fa", granularity="block", skip="yes")


def test_dfa_without_feedback_points_is_a_clear_error():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + self.a(x))

    with pytest.raises(ValueError, match="DFA needs feedback points.*Custom has no embed, blocks"):
        fb.convert(Custom(), "dfa")
    with pytest.raises(ValueError, match="1 weight layer.*no feedback points"):
        fb.convert(MLP(4, hidden=[], num_classes=3), "dfa")
    with pytest.raises(ValueError, match="block-level FA needs feedback points"):
        fb.convert(MLP(4, num_classes=3), "fa", granularity="block")
    vit = create_model("vit_mini", image_size=4, patch_size=2, dim=8, heads=2, depth=1, in_channels=1)
    fb.convert(vit, "dfa", token_feedback="per_token_error")
    with pytest.raises(ValueError, match="per_token_error' needs per-token logits"):
        vit(torch.randn(2, 1, 4, 4))


def test_sequential_mlp_dfa_keeps_layers_and_keys():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    keys = set(net.state_dict())
    fb.convert(net, "dfa", seed=0)
    assert len(net) == 3 and isinstance(net[2], nn.Linear) and [type(m) for m in net][1] is nn.ReLU
    assert set(net.state_dict()) == keys | {"credit.B_1"}
    out = net(torch.randn(5, 4))
    assert out.shape == (5, 3)


def test_deepcopy_of_a_chain_dfa_model_has_its_own_wiring():
    import copy

    m = MLP(6, num_classes=3, hidden=(5, 4))
    fb.convert(m, "dfa")
    c = copy.deepcopy(m)  # e.g. the runner's EMA copy
    hooks = list(c._forward_pre_hooks.values()) + list(c.body[1]._forward_pre_hooks.values())
    owner = [getattr(h, "func", h).__self__ for h in hooks]  # bound methods, or partials of them
    assert hooks and all(o is c.credit for o in owner) and c.credit is not m.credit
    F.cross_entropy(c(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is not None for p in c.parameters()) and all(p.grad is None for p in m.parameters())


def test_whole_model_pickle_round_trip():
    import tractable

    mlp = MLP(6, num_classes=3, hidden=(5, 4))
    fb.convert(mlp, "dfa")
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    tractable.TrAct(seq[0])
    fb.convert(seq, "fa")
    res = create_model("resmlp", in_features=6, dim=8, depth=2, num_classes=3)
    fb.convert(res, "fa", granularity="block", feedback_init="match_branch")
    for model, n_in in ((mlp, 6), (seq, 4), (res, 6)):
        buf = io.BytesIO()
        torch.save(model, buf)
        back = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
        assert type(back) is type(model) and fb.verify_feedback(back, model.state_dict())
        x = torch.randn(3, n_in)
        back(x).sum().backward()
        model(x).sum().backward()
        for p, q in zip(back.parameters(), model.parameters()):
            torch.testing.assert_close(p.grad, q.grad)

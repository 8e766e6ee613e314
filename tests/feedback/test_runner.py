"""The runner rules fa / dfa / usf / frsf / brsf / kp: options, checkpoints, DDP (2 gloo ranks), kill -9 + resume."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

import tractable.feedback as fb
from tractable.train import (ConfigError, cleanup, config_from_dict, config_to_dict, init_distributed,
                             latest_checkpoint, skip_interpreter_teardown, train)
from tests.train.conftest import tiny_dict
from tests.train.test_distributed import SECTIONS, _free_port, _steps, _weights
from tests.train.test_resume import assert_same_checkpoint, kill_and_resume


def _cfg(tmp_path, name, method, **sections):
    return config_from_dict(tiny_dict(tmp_path, name, method=method, **sections))


RESMLP = {"name": "resmlp", "kwargs": {"dim": 16, "depth": 2}}


@pytest.mark.parametrize("method,model,describe", [
    ({"name": "fa"}, None, "fa(layer, init=kaiming_uniform, seed=0)"),
    ({"name": "fa", "granularity": "block", "seed": 3}, RESMLP, "fa(block, skip=True, normalize=none, seed=3)"),
    ({"name": "fa", "compat": "seed"}, RESMLP, "fa(block, skip=False, normalize=rms_per_sample, compat=seed, seed=0)"),
    ({"name": "dfa"}, None, "dfa(placement=pre_ln, normalize=none, share_b0=False, train_head=bp, scale=0.1, seed=0)"),
    ({"name": "dfa", "placement": "post_ln"}, RESMLP,
     "dfa(placement=post_ln, normalize=none, share_b0=False, train_head=bp, scale=0.1, seed=0)"),
    ({"name": "usf"}, None, "usf(layer, init=kaiming_uniform, seed=0)"),
    ({"name": "frsf"}, None, "frsf(layer, init=kaiming_uniform, seed=0)"),
    ({"name": "brsf"}, None, "brsf(layer, init=kaiming_uniform, seed=0)"),
    ({"name": "kp", "feedback_scale": 0.5}, None, "kp(layer, init=kaiming_uniform, scale=0.5, seed=0)"),
])
def test_rules_train_and_checkpoint_the_feedback(tmp_path, method, model, describe):
    sections = {"train": {"epochs": 1, "progress": False, "plots": False, "tensorboard": False, "log_every": 1}}
    if model is not None:
        sections["model"] = model
    res = train(_cfg(tmp_path, "run", method, **sections))
    assert res.summary["method"] == describe
    sd = load_file(str(latest_checkpoint(res.run_dir / "checkpoints") / "model.safetensors"))
    keys = [k for k in sd if ("feedback" in k.split(".")[-1] or k.startswith("credit."))
            and not k.split(".")[-1].startswith("scale_")]  # match_branch's factors are not matrices
    assert keys or method["name"] == "usf"
    # the saved matrices are the ones regenerated from (seed, name): rebuild the model and verify
    from tractable.models import create_model

    m = create_model(**{"name": (model or {"name": "mlp"})["name"], **_model_kwargs(model)})
    opts = {k: v for k, v in method.items() if k not in ("name", "seed")}
    fb.convert(m, method["name"], seed=method.get("seed", 0), **opts)
    m.load_state_dict(sd, strict=True)
    if method["name"] != "brsf":
        assert fb.verify_feedback(m, sd) == sorted(keys)
    assert "method:" in (res.run_dir / "config.yaml").read_text()


def _model_kwargs(model):
    kw = {"in_channels": 1, "input_size": 16, "num_classes": 4}
    if model is None:
        return {**kw, "hidden": [16]}
    return {**kw, **model["kwargs"]}


def test_brsf_resamples_every_step(tmp_path):
    res = train(_cfg(tmp_path, "brsf", {"name": "brsf"}, train={"epochs": 1, "progress": False, "plots": False,
                                                                  "tensorboard": False}))
    sd = load_file(str(latest_checkpoint(res.run_dir / "checkpoints") / "model.safetensors"))
    step = int(sd["fc1.feedback_step"])
    assert step == res.summary["steps"] - 1  # drawn before the last step, from (seed, name, step)
    R = fb.draw(sd["fc1.feedback"].shape, seed=0, name="fc1", init="kaiming_uniform", fan=16, step=step)
    assert torch.equal(sd["fc1.feedback"], R)


@pytest.mark.parametrize("method", [{"name": "dfa"}, {"name": "fa"}, {"name": "fa", "granularity": "block"}])
def test_rules_under_bf16_autocast(tmp_path, method):
    res = train(_cfg(tmp_path, "amp", method, model=RESMLP,
                     train={"epochs": 1, "amp": "bf16", "progress": False, "plots": False, "tensorboard": False}))
    sd = load_file(str(latest_checkpoint(res.run_dir / "checkpoints") / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    assert res.summary["test_acc"][-1] > 0.3  # 4 classes: it learns something in one epoch


@pytest.mark.parametrize("method,match", [
    ({"name": "fa", "placement": "post_ln"}, r"unknown key 'method.placement' for learning rule 'fa' "
                                           r"\('placement' is an option of 'dfa'\)"),
    ({"name": "dfa", "placment": "post_ln"}, "unknown key 'method.placment' for learning rule 'dfa'"),
    ({"name": "dfa", "placement": "middle"}, "method.placement"),
    ({"name": "fa", "skip": False}, "'skip'.*do not apply to layer-level FA"),
    ({"name": "kp", "granularity": "block"}, "unknown key 'method.granularity' for learning rule 'kp'"),
    ({"name": "dfa", "feedback_scale": -1.0}, "method.feedback_scale must be a finite number > 0"),
    ({"name": "fa", "seed": -2}, "method.seed"),
])
def test_bad_rule_options_are_config_errors(tmp_path, method, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, "bad", method)


def test_fa_on_multihead_attention_model_fails_at_start(tmp_path):
    import torch.nn as nn

    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            x = x.reshape(x.shape[0], 1, 16)
            return self.fc(self.attn(x, x, x)[0][:, 0])

    with pytest.raises(TypeError, match="MultiheadAttention"):
        train(_cfg(tmp_path, "mha", {"name": "fa"}), model=MHA())


def test_ddp_buffer_broadcast_off_only_when_the_buffers_are_feedback_matrices():
    from tractable.experiments.feedback.rules import DFARule, FARule
    from tractable.models import create_model

    rule = DFARule(DFARule.Options(seed=0))
    rule.attach(create_model("mlp", in_channels=1, input_size=16, num_classes=4))
    assert rule.ddp_kwargs() == {"find_unused_parameters": False, "broadcast_buffers": False}
    rule = FARule(FARule.Options(seed=0, find_unused_parameters=True))
    rule.attach(create_model("small_resnet_credit", image_size=8, width=4, depth=1))  # BatchNorm statistics
    assert rule.ddp_kwargs() == {"find_unused_parameters": True}


# -------------------------------------------------------------------------------------------- DDP (2 ranks)
DDP_METHODS = {  # name: (method, model)
    "dfa": ({"name": "dfa"}, None),
    "dfa_unused": ({"name": "dfa", "find_unused_parameters": True}, None),
    "fa": ({"name": "fa"}, None),
    "fa_unused": ({"name": "fa", "find_unused_parameters": True}, None),
    "dfa_resmlp": ({"name": "dfa", "placement": "post_ln", "find_unused_parameters": True}, RESMLP),
    "fa_block_resmlp": ({"name": "fa", "granularity": "block"}, RESMLP),
    "brsf": ({"name": "brsf"}, None),  # R redrawn by the layers: the same sequence on both ranks
    "dfa_cnn1d": ({"name": "dfa"}, {"name": "cnn1d", "kwargs": {"channels": 4}}),  # full maps drawn lazily
}


def _ddp_worker(rank, world, port, cfg_dicts):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    assert init_distributed() is True
    try:
        # different seeds on the two ranks are caught by the start-up checksum
        m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        fb.convert(m, "dfa", seed=rank)
        try:
            fb.check_same_on_ranks(m)
            raise AssertionError("different feedback matrices on the two ranks were not detected")
        except RuntimeError as e:
            assert "feedback matrices differ across ranks" in str(e)
        for d in cfg_dicts:
            train(config_from_dict(d))
        dist.barrier()
    finally:
        cleanup()
    skip_interpreter_teardown()


@pytest.mark.distributed
def test_ddp_two_ranks_match_single_process(tmp_path):
    ddp_cfgs, single = [], {}
    for name, (method, model) in DDP_METHODS.items():
        sections = dict(SECTIONS, **({"model": model} if model else {}))
        ddp_cfgs.append(config_to_dict(_cfg(tmp_path, f"ddp_{name}", method, **sections)))
        single[name] = train(_cfg(tmp_path, f"one_{name}", method, **sections))
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp_cfgs), nprocs=2, join=True)
    for name in DDP_METHODS:
        one_dir, ddp_dir = single[name].run_dir, tmp_path / f"ddp_{name}"
        s1, _ = _steps(one_dir)
        s2, _ = _steps(ddp_dir)
        assert len(s1) == len(s2) == 8
        for a, b in zip(s1, s2):
            assert abs(a["loss"] - b["loss"]) <= 1e-5, (name, a["step"], a["loss"], b["loss"])
        w1, w2 = _weights(one_dir), _weights(ddp_dir)
        assert any(k.startswith("credit.") or k.endswith(".feedback") for k in w2)
        for k in w1:
            assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), (name, k, (w1[k] - w2[k]).abs().max())


# -------------------------------------------------------------------------------------------- kill -9 + resume
def test_sigkill_and_resume_is_bitwise_for_dfa(tmp_path):
    sections = dict(
        data={"subset": 160, "batch_size": 32, "augment": "crop_flip"},  # 5 steps per epoch
        model=RESMLP,
        optim={"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
        schedule={"name": "cosine", "warmup_epochs": 1},
        train={"epochs": 6, "save_every_steps": 3, "keep_checkpoints": 2},
    )
    method = {"name": "dfa", "placement": "post_ln"}
    last_ref, last_run = kill_and_resume(
        tmp_path, _cfg(tmp_path, "ref", method, **sections), _cfg(tmp_path, "run", method, **sections),
        config_from_dict(tiny_dict(tmp_path, "run", method=method, resume=True, **sections)), wait_s=60, timeout=120)
    assert last_run.name == "step_00000030"
    assert "credit.B_0" in assert_same_checkpoint(last_ref, last_run)


@pytest.mark.parametrize("method", [{"name": "fa", "align_every": 2}, {"name": "dfa", "align_every": 2},
                                    {"name": "kp", "align_every": 2, "decay": 0.01}])
def test_alignment_is_logged_and_plotted(tmp_path, method):
    import json

    from tractable.train import plot_run

    res = train(_cfg(tmp_path, "align", method, train={"epochs": 1, "progress": False, "plots": False,
                                                         "tensorboard": False, "log_every": 2}))
    recs = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in recs for k in r if k.startswith("align/")}
    assert any(k.endswith("/grad_angle") for k in keys)
    if method["name"] != "dfa":
        assert any(k.endswith("/wb_angle") for k in keys) and any(k.endswith("/norm_ratio") for k in keys)
    angles = [v for r in recs for k, v in r.items() if k.endswith("/grad_angle")]
    assert all(0.0 <= a <= 180.0 for a in angles)
    assert any(p.name == "align.png" for p in plot_run(res.run_dir))


def test_kp_runner_gives_w_and_b_weight_decay(tmp_path):
    with pytest.warns(UserWarning, match="KP layers' W and B use weight decay"):
        res = train(_cfg(tmp_path, "kp0", {"name": "kp"}, train={"epochs": 1, "progress": False, "plots": False,
                                                                  "tensorboard": False}))
    group = next(g for g in res.trainer.optimizer.param_groups if g.get("kp_group")) if hasattr(res, "trainer") \
        else None
    if group is not None:
        assert group["weight_decay"] == 1e-3
    with pytest.raises(ConfigError, match="method.decay"):
        _cfg(tmp_path, "kpbad", {"name": "kp", "decay": -1.0})


def test_dfa_with_lazily_drawn_feedback_under_ema_and_resume(tmp_path):
    """Full conv feedback is drawn at the first forward: the EMA copy and a resumed run pick it up."""
    model = {"name": "cnn1d", "kwargs": {"channels": 4}}
    sections = {"model": model, "train": {"epochs": 2, "ema": 0.9, "progress": False, "plots": False,
                                          "tensorboard": False}}
    res = train(_cfg(tmp_path, "lazy", {"name": "dfa"}, **sections))
    sd = load_file(str(latest_checkpoint(res.run_dir / "checkpoints") / "model.safetensors"))
    assert sd["credit.B_1"].shape[1] > 0
    again = train(config_from_dict(tiny_dict(tmp_path, "lazy", method={"name": "dfa"}, resume=True,
                                             **dict(sections, train=dict(sections["train"], epochs=3)))))
    assert again.summary["steps"] > res.summary["steps"]

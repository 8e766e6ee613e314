"""Stacked learning rules (``method.name=tract+<rule>``): per-rule options, the saved config, refusals with a
reason, the first layer's update against TrAct's formula on the other rule's gradient, 2-rank DDP and kill -9 +
resume."""
import copy
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml

from tests.train.conftest import tiny_dict
from tests.train.test_distributed import _free_port
from tests.train.test_resume import assert_same_checkpoint, kill_and_resume
from tractable.models import create_model, first_layer
from tractable.train import (ConfigError, cleanup, config_from_dict, config_to_dict, init_distributed, load_config,
                             load_run_config, skip_interpreter_teardown, train)
from tractable.train.rules import StackedRule, build_rule, check_stack, list_rules

BASE = ["data.name=digits", "model.name=mlp", "optim.lr=0.1", "train.epochs=1"]


def _method(*overrides):
    return load_config(None, [*BASE, *overrides]).method


# -- configuration ------------------------------------------------------------------------------------------

def test_stack_options_per_rule_and_saved_config_records_every_rule(tmp_path):
    m = _method("method.name=tract+fa", "method.tract.l=0.2", "method.fa.granularity=layer", "method.fa.seed=3")
    assert m.stacked and list(m.rules) == ["tract", "fa"]
    assert (m.tract.l, m.fa.granularity, m.fa.seed) == (0.2, "layer", 3)
    cfg = load_config(None, [*BASE, "method.name=tract+fa", "method.tract.l=0.2", f"out_dir={tmp_path}"])
    written = config_to_dict(cfg)["method"]
    assert written["name"] == "tract+fa"
    assert written["tract"] == {"l": 0.2, "exact": False, "layer": None, "kwargs": {}, "diag_every": 100}
    assert set(written["fa"]) >= {"granularity", "feedback_init", "seed", "exclude"}  # every option, defaults too
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(path) == cfg


def test_single_rule_keeps_the_flat_form_and_accepts_the_nested_one():
    flat = _method("method.name=tract", "method.l=0.05")
    nested = _method("method.name=tract", "method.tract.l=0.05")
    assert flat == nested and flat.l == 0.05 and flat.options.l == 0.05
    assert config_to_dict(load_config(None, [*BASE, "method.name=tract", "method.tract.l=0.05"]))["method"] == {
        "name": "tract", "l": 0.05, "exact": False, "layer": None, "kwargs": {}, "diag_every": 100}
    with pytest.raises(ConfigError, match=r"method(.tract)?.l: given twice"):
        _method("method.name=tract", "method.l=0.05", "method.tract.l=0.2")


@pytest.mark.parametrize("overrides, message", [
    (["method.name=fa", "method.l=0.1"], r"unknown key 'method.l' for learning rule 'fa' \('l' is an option of "
                                         r"'tract'\)"),
    (["method.name=fa", "method.l=0.5"], r"unknown key 'method.l' for learning rule 'fa'"),
    (["method.name=normal", "method.exact=false"], r"unknown key 'method.exact' for learning rule 'normal'"),
    (["method.name=tract+fa", "method.l=0.1"], r"in a stack each rule's options go under its name, e.g. "
                                               r"method.tract.l"),
    (["method.name=tract+fa", "method.fa.l=0.1"], r"unknown key 'method.fa.l' for learning rule 'fa'"),
    (["method.name=tract+subspace", "method.fa.seed=1"], r"rule 'fa' is not part of method.name='tract\+subspace'"),
    (["method.name=tract", "method.fa.seed=1"], r"'fa' is a rule of its own; to stack it write "
                                                r"method.name=tract\+fa"),
    (["method.name=tract+fa", "method.tract.l=-1"], r"method.tract.l: TrAct's λ must be > 0"),
    (["method.name=tract+subspace", "method.subspace.k=3"], r"method.subspace.k: only for method.kind=simplex"),
])
def test_a_key_the_rule_does_not_have_is_an_error_whatever_its_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _method(*overrides)


def test_legacy_keys_are_dropped_only_when_loading_a_saved_config(tmp_path):
    old = yaml.safe_load(yaml.safe_dump(config_to_dict(load_config(None, BASE))))
    old["method"] = {"name": "fa", "l": 0.1, "exact": False, "layer": None, "kwargs": {}}
    with pytest.raises(ConfigError, match="unknown key 'method.l'"):
        config_from_dict(old)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_run_config(tmp_path / "run").method.name == "fa"
    old["method"]["l"] = 0.5  # not the old default: it was a real (ignored) choice, an error even when saved
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"config.yaml: unknown key 'method.l'"):
        load_run_config(tmp_path / "run")


@pytest.mark.parametrize("name, reason", [
    ("fa+tract", r"write TrAct first: method.name=tract\+fa"),
    ("tract+normal", r"'normal' is plain backpropagation"),
    ("tract+tract", r"a rule appears twice"),
    ("fa+subspace", r"only TrAct stacks with another rule"),
    ("tract+fa+subspace", r"a stack is TrAct and one other rule"),
    ("tract+nope", r"unknown learning rule 'nope'"),
])
def test_pairs_that_cannot_compose_are_refused_with_the_reason(name, reason):
    with pytest.raises(ConfigError, match=reason):
        _method(f"method.name={name}")


def test_every_other_rule_stacks_with_tract():
    assert [n for n in list_rules() if n not in ("tract", "normal") and check_stack(["tract", n]) is not None] == []


def test_switching_the_rule_keeps_the_options_of_a_rule_it_keeps():
    data = config_to_dict(load_config(None, BASE))
    data["method"] = {"name": "tract", "l": 0.05}
    from tractable.train.config import apply_overrides

    stacked = config_from_dict(apply_overrides(data, ["method.name=tract+subspace"])).method
    assert stacked.tract.l == 0.05
    back = config_from_dict(apply_overrides(config_to_dict(config_from_dict(
        apply_overrides(data, ["method.name=tract+subspace"]))), ["method.name=tract"])).method
    assert back.l == 0.05


# -- the first layer's update -----------------------------------------------------------------------------

def _grads(name, *overrides, seed=0):
    method = _method(f"method.name={name}", *overrides)
    kw = dict(num_classes=10, in_channels=1, image_size=8)
    torch.manual_seed(seed)
    model = create_model("mlp", **kw)
    rule = build_rule(method)
    torch.manual_seed(seed + 1)  # the subspace's other endpoint: the same in both runs
    rule.model_fn = lambda: create_model("mlp", **kw)
    model = rule.attach(model)
    subs = [r for r in getattr(rule, "rules", [rule]) if getattr(r, "sub", None) is not None]
    for r in subs:
        r.sub.set_point(r.sub.canonical_point())
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 1, 8, 8, generator=g, dtype=torch.float32)
    y = torch.randint(0, 10, (16,), generator=g)
    F.cross_entropy(model(x), y).backward()
    return rule, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, x


@pytest.mark.parametrize("other", ["fa", "subspace", "dfa", "kp"])
def test_tract_preconditions_the_first_layers_gradient_of_the_other_rule(other):
    """With TrAct stacked, the first layer's weight gradient is G·(XᵀX/b + λI)⁻¹, G being the other rule's own
    gradient of it (FA's signal; a subspace point's shared gradient times its coefficient); every other
    parameter gets exactly the other rule's gradient."""
    lam = 0.3
    _, plain, x = _grads(other)
    rule, stacked, _ = _grads(f"tract+{other}", f"method.tract.l={lam}")
    assert isinstance(rule, StackedRule)
    X = x.flatten(1).double()
    P = torch.linalg.inv(X.T @ X / X.shape[0] + lam * torch.eye(X.shape[1], dtype=torch.float64))
    first = "fc1"
    weight = [k for k in plain if k.startswith(first + ".") and "weight" in k]
    assert len(weight) == 1
    assert plain.keys() == stacked.keys()
    for k in plain:
        if k in weight:
            expected = (plain[k].double() @ P).float()
            torch.testing.assert_close(stacked[k], expected, rtol=1e-4, atol=1e-6)
            assert not torch.allclose(stacked[k], plain[k], rtol=1e-2, atol=0)  # the update really changes
        else:
            torch.testing.assert_close(stacked[k], plain[k], rtol=0, atol=0)


def test_stacked_run_changes_only_the_first_layers_update_against_plain_fa(tiny_cfg):
    plain = train(tiny_cfg("fa", method={"name": "fa", "seed": 1}, train={"epochs": 1}))
    stacked = train(tiny_cfg("tract_fa", method={"name": "tract+fa", "tract": {"l": 0.1}, "fa": {"seed": 1}},
                             train={"epochs": 1}))
    assert stacked.summary["method"].startswith("tract(l=0.1") and "+fa(layer" in stacked.summary["method"]
    saved = yaml.safe_load((stacked.run_dir / "config.yaml").read_text())["method"]
    assert saved["name"] == "tract+fa" and saved["fa"]["seed"] == 1 and saved["tract"]["l"] == 0.1
    a, b = plain.model.state_dict(), stacked.model.state_dict()
    path, _ = first_layer(stacked.model)
    assert not torch.allclose(a[f"{path}.weight"], b[f"{path}.weight"])
    assert load_run_config(stacked.run_dir) == config_from_dict(config_to_dict(load_run_config(stacked.run_dir)))


def test_any_registry_model_with_a_rule_its_math_allows(tiny_cfg):
    """FA on a ViT and a subspace of a CRATE through the runner, stacked with TrAct."""
    data = {"name": "synthetic", "kwargs": {"shape": [1, 8, 8], "num_classes": 4, "noise": 0.3}, "subset": 16,
            "test_subset": 16, "batch_size": 8, "eval_batch_size": 16}
    vit = train(tiny_cfg("vit_fa", data=data, model={"name": "vit_mini", "kwargs": {}},
                         method={"name": "tract+fa"}, train={"epochs": 1}))
    assert "+fa(" in vit.summary["method"]
    crate = train(tiny_cfg("crate_line", data=data, model={"name": "crate_tiny", "kwargs": {"patch_size": 4}},
                           method={"name": "tract+subspace", "subspace": {"kind": "line"}}, train={"epochs": 1}))
    assert "+subspace(line" in crate.summary["method"]


# -- resume and DDP ---------------------------------------------------------------------------------------

STACKS = {
    "tract_fa": {"name": "tract+fa", "tract": {"l": 0.1}, "fa": {"seed": 3}},
    "tract_subspace": {"name": "tract+subspace", "tract": {"l": 0.1}, "subspace": {"kind": "line", "beta": 1.0}},
}


@pytest.mark.slow
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_stack_kill_and_resume_is_bitwise(tmp_path, stack):
    sections = dict(
        data={"name": "synthetic", "kwargs": {"shape": [1, 8, 8], "num_classes": 4, "noise": 0.3}, "subset": 160,
              "test_subset": 64, "batch_size": 32, "augment": "flip"},
        model={"name": "small_cnn", "kwargs": {"widths": [4, 8]}},
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        method=STACKS[stack],
        schedule={"name": "cosine", "warmup_epochs": 1},
        train={"epochs": 4, "save_every_steps": 3, "keep_checkpoints": 2},
    )
    last_ref, last_run = kill_and_resume(
        tmp_path, config_from_dict(tiny_dict(tmp_path, "ref", **sections)),
        config_from_dict(tiny_dict(tmp_path, "run", **sections)),
        config_from_dict(tiny_dict(tmp_path, "run", resume=True, **sections)), min_step=5, delay=0.1)
    assert_same_checkpoint(last_ref, last_run)
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    run = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert ref["test_acc"] == run["test_acc"] and ref["method"] == run["method"]


def _ddp_worker(rank, world, port, cfgs):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    init_distributed()
    try:
        for d in cfgs:
            res = train(config_from_dict(d))
            flat = torch.cat([p.detach().flatten() for p in res.model.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            assert torch.equal(gathered[0], gathered[1]), "the ranks' weights differ"
    finally:
        cleanup()
    skip_interpreter_teardown()


@pytest.mark.distributed
def test_stacks_under_two_rank_ddp_match_one_process(tmp_path):
    from safetensors.torch import load_file

    from tractable.train import latest_checkpoint

    sections = dict(data={"subset": 120, "batch_size": 32}, optim={"name": "sgd", "lr": 0.2, "momentum": 0.9},
                    train={"epochs": 2})
    cfgs = []
    for stack, method in sorted(STACKS.items()):
        method = copy.deepcopy(method)
        method["tract"]["exact"] = True  # statistics summed over ranks: the same update as one process
        one = train(config_from_dict(tiny_dict(tmp_path, f"{stack}-one", method=method, **sections)))
        assert one.summary["steps"] == 8
        cfgs.append(config_to_dict(config_from_dict(tiny_dict(tmp_path, f"{stack}-ddp", method=method, **sections))))
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfgs), nprocs=2, join=True)
    for stack in sorted(STACKS):
        w1 = load_file(str(latest_checkpoint(tmp_path / f"{stack}-one" / "checkpoints") / "model.safetensors"))
        w2 = load_file(str(latest_checkpoint(tmp_path / f"{stack}-ddp" / "checkpoints") / "model.safetensors"))
        assert w1.keys() == w2.keys()
        for k in w1:
            assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=0), (stack, k)
        s = json.loads((tmp_path / f"{stack}-ddp" / "summary.json").read_text())
        assert s["world_size"] == 2 and s["method"].startswith("tract(l=0.1, exact")


def test_a_saved_early_config_file_loads_but_its_overrides_are_strict(tmp_path):
    data = config_to_dict(load_config(None, BASE))
    data["method"] = {"name": "fa", "l": 0.1, "exact": False, "layer": None, "kwargs": {}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).method.name == "fa"
    with pytest.raises(ConfigError, match="unknown key 'method.l' for learning rule 'fa'"):
        load_config(path, ["method.l=0.1"])

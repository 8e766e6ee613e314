"""Config: YAML + overrides, round trip, and clear errors for unknown keys, bad enums, bad types."""
import pytest
import yaml

from tractable.train import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

BASE = """
data: {name: cifar10, batch_size: 64, augment: crop_flip}
model: {name: resnet18_cifar}
method: {name: tract, l: 0.05}
optim: {name: sgd, lr: 0.1, weight_decay: 5e-4}
schedule: {name: step, milestones: [30, 60]}
train: {epochs: 90, amp: bf16}
"""


@pytest.fixture
def base_yaml(tmp_path):
    p = tmp_path / "base.yaml"
    p.write_text(BASE)
    return p


def test_yaml_plus_overrides(base_yaml):
    cfg = load_config(base_yaml, ["optim.lr=0.05", "schedule.milestones=[10, 20.5]", "train.clip_grad=1.0",
                                  "model.kwargs.zero_init_residual=true", "run.name=abc", "resume=true",
                                  "optim.betas=[0.9, 0.99]", "data.augment=null"])
    assert isinstance(cfg, RunConfig)
    assert cfg.optim.lr == 0.05 and cfg.optim.weight_decay == 5e-4  # "5e-4" is a YAML string; accepted as float
    assert cfg.schedule.milestones == [10.0, 20.5]
    assert cfg.train.clip_grad == 1.0 and cfg.train.amp == "bf16" and cfg.train.epochs == 90
    assert cfg.model.kwargs == {"zero_init_residual": True}
    assert cfg.name == "abc" and cfg.resume is True
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.data.augment is None
    assert cfg.method.name == "tract" and cfg.method.l == 0.05 and cfg.method.exact is False
    # defaults
    assert cfg.train.grad_accum == 1 and cfg.train.ema is None and cfg.data.eval_batch_size == 512
    assert cfg.task == "classification" and cfg.out_dir == "runs"


def test_round_trip_through_yaml(base_yaml, tmp_path):
    cfg = load_config(base_yaml, ["train.ema=0.999", "data.kwargs={label: coarse}"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert yaml.safe_load(out.read_text())["optim"]["betas"] == [0.9, 0.999]


def test_overrides_without_file():
    cfg = load_config(None, ["data.name=digits", "model.name=mlp", "optim.lr=1e-3", "train.epochs=1"])
    assert cfg.optim.lr == 1e-3 and cfg.data.name == "digits"


def test_unknown_key_names_the_key_and_valid_keys(base_yaml):
    with pytest.raises(ConfigError) as e:
        load_config(base_yaml, ["optim.learning_rate=0.1"])
    msg = str(e.value)
    assert "optim.learning_rate" in msg
    for valid in ("lr", "momentum", "nesterov", "weight_decay", "betas", "eps"):
        assert valid in msg
    with pytest.raises(ConfigError, match="'optimizer'.*valid keys: data, model, optim, train"):
        load_config(base_yaml, ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="run.foo"):
        load_config(base_yaml, ["run.foo=1"])


@pytest.mark.parametrize("override, key, accepted", [
    ("optim.name=rmsprop", "optim.name", ["'sgd'", "'adam'", "'adamw'", "'lion'"]),
    ("schedule.name=linear", "schedule.name", ["'none'", "'cosine'", "'step'"]),
    ("train.amp=fp8", "train.amp", ["'none'", "'bf16'", "'fp16'"]),
    ("data.augment=rotate", "data.augment", ["'crop_flip'", "'flip'", "'crop'"]),
    ("method.name=magic", "method.name", ["'normal'", "'tract'"]),
    ("task=segmentation", "task", ["'classification'"]),
])
def test_bad_enum_value_lists_accepted_values(base_yaml, override, key, accepted):
    with pytest.raises(ConfigError) as e:
        load_config(base_yaml, [override])
    msg = str(e.value)
    assert key in msg and "accepted values" in msg
    for a in accepted:
        assert a in msg


@pytest.mark.parametrize("override, key", [
    ("train.epochs=ten", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("optim.lr=fast", "optim.lr"),
    ("train.compile=1", "train.compile"),
    ("schedule.milestones=30", "schedule.milestones"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("data.name=[a, b]", "data.name"),
    ("train.clip_grad=big", "train.clip_grad"),
    ("model.kwargs=3", "model.kwargs"),
    ("data.batch_size=true", "data.batch_size"),
])
def test_bad_type_names_the_key(base_yaml, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(base_yaml, [override])


def test_missing_required_and_range_checks(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'optim.lr'"):
        load_config(None, ["data.name=digits", "model.name=mlp", "train.epochs=1"])
    with pytest.raises(ConfigError, match="missing required key 'train.epochs'"):
        config_from_dict({"data": {"name": "digits"}, "model": {"name": "mlp"}, "optim": {"lr": 0.1}})
    ok = ["data.name=digits", "model.name=mlp", "train.epochs=1", "optim.lr=0.1"]
    with pytest.raises(ConfigError, match="train.grad_accum"):
        load_config(None, ok + ["train.grad_accum=0"])
    with pytest.raises(ConfigError, match="train.ema"):
        load_config(None, ok + ["train.ema=1.5"])
    with pytest.raises(ConfigError, match="nesterov"):
        load_config(None, ok + ["optim.nesterov=true", "optim.name=adam"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ok + ["optim.lr"])
    with pytest.raises(ConfigError, match="name"):
        load_config(None, ok + ["run.name=a/b"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")


# -- per-rule options -----------------------------------------------------------------------------------------

def _method(**kw):
    data = yaml.safe_load(BASE)
    data["method"] = kw
    return config_from_dict(data)


def test_method_options_belong_to_their_rule():
    cfg = _method(name="tract", l=0.2, exact=True)
    assert cfg.method.options.l == 0.2 and cfg.method.l == 0.2 and cfg.method.exact is True
    assert config_to_dict(cfg)["method"] == {"name": "tract", "l": 0.2, "exact": True, "layer": None, "kwargs": {},
                                             "diag_every": 100}
    assert config_to_dict(_method(name="normal"))["method"] == {"name": "normal"}
    with pytest.raises(ConfigError, match=r"unknown key 'method.placement' for learning rule 'tract'.*valid keys: "
                                          r"name, l, exact, layer, kwargs, diag_every"):
        _method(name="tract", placement="post_ln")
    with pytest.raises(ConfigError, match=r"'method.l' for learning rule 'normal' \('l' is an option of 'tract'\)"):
        _method(name="normal", l=0.5)
    with pytest.raises(ConfigError, match=r"method.exact: expected a bool"):
        _method(name="tract", exact="yes")
    with pytest.raises(ConfigError, match=r"method.l: TrAct's λ must be > 0"):
        _method(name="tract", l=0.0)
    with pytest.raises(ConfigError, match=r"method.name: unknown learning rule 'nope'; accepted values: .*'tract'"):
        _method(name="nope")
    with pytest.raises(AttributeError, match="learning rule 'normal' has no option 'l'"):
        _method(name="normal").method.l


def test_method_section_written_by_earlier_versions_still_loads():
    # before options belonged to their rule, every method section carried TrAct's keys with these defaults: a
    # saved config.yaml read back drops them; anywhere else they are unknown keys of the rule
    data = yaml.safe_load(BASE)
    data["method"] = {"name": "normal", "l": 0.1, "exact": False, "layer": None, "kwargs": {}}
    cfg = config_from_dict(data, saved=True)
    assert cfg.method.name == "normal" and config_to_dict(cfg)["method"] == {"name": "normal"}
    with pytest.raises(ConfigError, match="unknown key 'method.l' for learning rule 'normal'"):
        config_from_dict(data)


def test_a_new_rule_gets_typed_validated_options():
    from dataclasses import dataclass
    from typing import Literal

    from tractable.train.rules import LearningRule, _RULES, build_rule, describe_rules, register_rule

    @register_rule("_test_rule")
    class _TestRule(LearningRule):
        """A rule made by the test."""

        @dataclass
        class Options:
            kind: Literal["line", "curve"] = "line"
            beta: float = 1.0

            def validate(self):
                if self.beta < 0:
                    raise ValueError(f"method.beta: must be >= 0, got {self.beta}")

    try:
        cfg = _method(name="_test_rule", kind="curve", beta="2e-1")
        assert (cfg.method.kind, cfg.method.beta) == ("curve", 0.2)
        rule = build_rule(cfg.method)
        assert isinstance(rule, _TestRule) and rule.opts.kind == "curve"
        with pytest.raises(ConfigError, match=r"method.kind: 'simplex' is not accepted; accepted values: 'line', "
                                              r"'curve'"):
            _method(name="_test_rule", kind="simplex")
        with pytest.raises(ConfigError, match=r"method.beta: must be >= 0, got -1.0"):
            _method(name="_test_rule", beta=-1)
        text = "\n".join(describe_rules())
        assert "_test_rule: A rule made by the test." in text and "method.kind: 'line' | 'curve' = 'line'" in text
        assert config_from_dict(config_to_dict(cfg)) == cfg
    finally:
        _RULES._classes.pop("_test_rule")


def test_overriding_the_rule_starts_its_options_afresh(base_yaml):
    # the file's TrAct λ belongs to TrAct: switching to plain backprop drops it, in any override order
    cfg = load_config(base_yaml, ["method.name=normal"])
    assert cfg.method.name == "normal" and config_to_dict(cfg)["method"] == {"name": "normal"}
    cfg = load_config(base_yaml, ["method.exact=true", "method.name=tract"])  # same rule: the file's l is kept
    assert (cfg.method.l, cfg.method.exact) == (0.05, True)
    with pytest.raises(ConfigError, match="'method.l' for learning rule 'normal'"):
        load_config(base_yaml, ["method.l=0.2", "method.name=normal"])

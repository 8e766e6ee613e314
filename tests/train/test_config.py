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
    assert cfg.train.grad_accum == 1 and cfg.train.ema == 0.0 and cfg.data.eval_batch_size == 512
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

"""Registry behaviour: names, lookup errors, keyword checking, registration."""
import re

import pytest
import torch.nn as nn

from tractable.models import create_model, list_models, model_defaults, register_model, unregister_model

EXPECTED = {
    "cnn1d",
    "mlp",
    "resnet18_cifar",
    "resnet18_tract_cifar",
    "resnet34_cifar",
    "resnet34_tract_cifar",
    "resnet50_cifar",
    "resnet50_tract_cifar",
    "resnet_small",
    "small_cnn",
    "vit_cifar",
    "vit_small_open",
}


def test_list_models_sorted_snake_case_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert EXPECTED <= set(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)


def test_list_models_pattern():
    assert list_models("resnet*_tract_cifar") == [
        "resnet18_tract_cifar", "resnet34_tract_cifar", "resnet50_tract_cifar"
    ]
    assert list_models("nothing_matches*") == []


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet19_cifar")
    msg = str(err.value)
    assert "resnet19_cifar" in msg
    for name in EXPECTED:
        assert name in msg
    assert "did you mean" in msg


def test_unknown_kwarg_lists_accepted_ones():
    with pytest.raises(TypeError) as err:
        create_model("small_cnn", num_class=10)
    msg = str(err.value)
    assert "num_class" in msg
    for accepted in ("num_classes", "in_channels", "image_size", "widths"):
        assert accepted in msg


@pytest.mark.parametrize(
    "name, kwargs, needle",
    [
        ("resnet18_cifar", {"num_classes": 0}, "num_classes"),
        ("resnet18_tract_cifar", {"in_channels": 2.5}, "in_channels"),
        ("resnet_small", {"blocks": (2, 2), "channels": (64, 128, 256)}, "blocks"),
        ("vit_cifar", {"image_size": 30}, "patch_size"),
        ("vit_cifar", {"heads": 5}, "heads"),
        ("vit_cifar", {"attn_scale": "sqrt"}, "attn_scale"),
        ("vit_small_open", {"pos_embed": "learned"}, "pos_embed"),
        ("vit_small_open", {"dropout": 1.5}, "dropout"),
        ("mlp", {"activation": "swish"}, "activation"),
        ("mlp", {"hidden": "256"}, "hidden"),
        ("small_cnn", {"image_size": 2}, "image_size"),
        ("cnn1d", {"input_size": 0}, "input_size"),
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(name, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        create_model(name, **kwargs)


def test_bad_choice_lists_accepted_values():
    with pytest.raises(ValueError) as err:
        create_model("mlp", activation="swish")
    for choice in ("relu", "gelu", "tanh"):
        assert choice in str(err.value)


def test_model_defaults():
    d = model_defaults("vit_cifar")
    assert d["patch_size"] == 4 and d["hidden"] == 384 and d["heads"] == 12 and d["depth"] == 7
    assert d["mlp_hidden"] == 1536 and d["dropout"] == 0.0
    with pytest.raises(ValueError, match="unknown model name"):
        model_defaults("nope")


def test_register_model_rules():
    with pytest.raises(ValueError, match="snake_case"):
        register_model("ResNet")
    with pytest.raises(ValueError, match="already registered"):
        @register_model("mlp")
        def other_mlp(*, num_classes=10):
            return nn.Linear(1, num_classes)


def test_register_create_unregister_custom_model():
    @register_model("tiny_test_linear")
    def tiny_test_linear(*, num_classes=10, in_channels=3, image_size=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))

    try:
        assert "tiny_test_linear" in list_models()
        model = create_model("tiny_test_linear", num_classes=5)
        assert model[1].out_features == 5
    finally:
        assert unregister_model("tiny_test_linear") is tiny_test_linear
    assert "tiny_test_linear" not in list_models()
    with pytest.raises(ValueError, match="unknown model name"):
        unregister_model("tiny_test_linear")


def test_builder_must_return_a_module():
    @register_model("tiny_test_not_a_module")
    def tiny_test_not_a_module():
        return 42

    try:
        with pytest.raises(TypeError, match="nn.Module"):
            create_model("tiny_test_not_a_module")
    finally:
        unregister_model("tiny_test_not_a_module")


def test_builder_with_var_kwargs_gets_everything():
    @register_model("tiny_test_var_kwargs")
    def tiny_test_var_kwargs(**kwargs):
        return nn.Linear(kwargs["n"], 1)

    try:
        assert create_model("tiny_test_var_kwargs", n=3).in_features == 3
    finally:
        unregister_model("tiny_test_var_kwargs")

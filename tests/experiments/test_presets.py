"""Every preset is a valid config; the recipe values match the papers' setups."""
import pytest

from tractable.experiments.presets import list_presets, preset_config


@pytest.mark.parametrize("name", list_presets())
def test_preset_loads(name):
    cfg = preset_config(name, ["train.epochs=1"])
    assert cfg.train.epochs == 1


def test_recipe_values():
    r = preset_config("tract_cifar10_resnet18")
    assert (r.model.name, r.method.name, r.method.l, r.optim.lr, r.schedule.name) == (
        "resnet18_tract_cifar", "tract", 0.1, 0.08, "cosine")
    v = preset_config("tract_cifar10_vit")
    assert (v.model.name, v.optim.name, v.train.label_smoothing) == ("vit_cifar", "adam", 0.1)
    o = preset_config("open_tract_cifar100_resnet")
    assert (o.method.l, o.optim.weight_decay, o.schedule.warmup_epochs, o.data.augment) == (
        0.05, 0.0005, 5, "randaugment")
    with pytest.raises(ValueError, match="available"):
        preset_config("nope")

"""Named run presets (YAML files next to this module): the papers' recipes for ``tractable train --preset``.

| preset | source |
|---|---|
| ``tract_cifar10_resnet18`` | official TrAct ``train_cifar.py`` README grid, SGD row (lr 0.08, 100 epochs) |
| ``tract_cifar10_vit`` | TrAct paper Fig. 4: omihub777 ViT, Adam + cosine, label smoothing 0.1 |
| ``open_tract_cifar100_resnet`` | open-TrAct README: small GELU ResNet, SGD 0.08, wd 5e-4, λ 0.05 |
| ``open_tract_cifar100_vit`` | open-TrAct README: ViT L=12 d=128, Adam 1e-3, λ 0.1 |
| ``subspace_cifar10_resnet20`` | subspace paper (reference configs): cResNet20, line β = 1, SGD 0.1, wd 1e-4, 160 epochs |
| ``smoke`` | a few seconds on the CPU: synthetic data, small CNN, TrAct |

Every preset is an ordinary config; override any key on the command line (e.g. ``method.name=normal``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import yaml

from tractable.train.config import RunConfig, apply_overrides, config_from_dict

_DIR = Path(__file__).parent


def list_presets() -> List[str]:
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = _DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return path


def preset_config(name: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The preset's config with ``key=value`` overrides applied."""
    with open(preset_path(name)) as f:
        data = yaml.safe_load(f)
    return config_from_dict(apply_overrides(data, list(overrides)))

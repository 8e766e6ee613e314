"""Shared helpers for the runner tests: a tiny, fast run configuration (MLP on synthetic 1-D data)."""
import pytest

from tractable.train import config_from_dict


def tiny_dict(tmp_path, name="run", **sections):
    """4-class synthetic signals of shape (1, 16), 128 train / 64 test samples, an MLP, SGD, 2 epochs."""
    cfg = {
        "data": {"name": "synthetic", "kwargs": {"shape": [1, 16], "num_classes": 4, "noise": 0.3},
                 "batch_size": 32, "eval_batch_size": 64, "subset": 128, "test_subset": 64},
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"epochs": 2, "progress": False, "plots": False, "tensorboard": False, "log_every": 1},
        "out_dir": str(tmp_path),
        "name": name,
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(name="run", **sections):
        return config_from_dict(tiny_dict(tmp_path, name, **sections))

    return make

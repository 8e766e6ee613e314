"""`tractable tract-cifar`: the official flags, their mapping, and one epoch on a synthetic CIFAR-format dataset."""
import json

import pytest

from tests.data._builders import cifar10_arrays, write_cifar10_python
from tractable.cli.main import build_parser, main
from tractable.experiments.tract.cifar import config_from_args

OFFICIAL_FLAGS = ["--method", "--l", "--n_epochs", "--lr", "--optim", "--batch_size", "--dataset", "--seed",
                  "--no_data_aug", "--no_cudnn", "--device"]


def test_help_lists_the_official_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tract-cifar", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in OFFICIAL_FLAGS:
        assert flag in out
    for choice in ("normal_34", "tract_50", "adam_cosine", "sgd_w_momentum_cosine", "cifar100"):
        assert choice in out


def _cfg(argv):
    args = build_parser().parse_args(["tract-cifar", *argv])
    return config_from_args(args)


def test_defaults_and_mapping_match_the_official_script():
    cfg = _cfg(["--method", "tract"])
    assert cfg.model.name == "resnet18_tract_cifar" and cfg.method.name == "tract" and cfg.method.l == 0.1
    assert cfg.train.epochs == 100 and cfg.optim.lr == 0.1 and cfg.data.batch_size == 128
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 0.0
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_epochs == 0
    assert cfg.data.name == "cifar10" and cfg.data.augment == "crop_flip" and cfg.data.drop_last
    assert cfg.train.seed == 0 and cfg.train.device == "cuda" and cfg.train.label_smoothing == 0
    assert cfg.data.mean == [0.4914, 0.4822, 0.4465] and cfg.data.std == [0.2023, 0.1994, 0.2010]
    cfg = _cfg(["--method", "normal_50", "--optim", "adam", "--lr", "0.001", "--no_data_aug",
                "--dataset", "cifar100", "--l", "0.2"])
    assert cfg.model.name == "resnet50_tract_cifar" and cfg.method.name == "normal"
    assert cfg.optim.name == "adam" and cfg.schedule.name == "none" and cfg.data.augment is None
    assert cfg.data.name == "cifar100"
    cfg = _cfg(["-m", "tract_34", "--optim", "adam_cosine", "train.save_every_steps=7"])
    assert cfg.model.name == "resnet34_tract_cifar" and cfg.schedule.name == "cosine" and cfg.optim.name == "adam"
    assert cfg.train.save_every_steps == 7


def test_method_is_required_and_choices_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["tract-cifar"])
    with pytest.raises(SystemExit):
        main(["tract-cifar", "--method", "tract_18"])
    assert "invalid choice" in capsys.readouterr().err


def test_one_epoch_on_a_synthetic_cifar_format_dataset(tmp_path, capsys):
    write_cifar10_python(tmp_path / "data", cifar10_arrays(seed=0, per_batch=16, n_test=16))
    rc = main(["tract-cifar", "--method", "tract", "--n_epochs", "1", "--lr", "0.08", "--batch_size", "16",
               "--device", "cpu", "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "runs"),
               "--name", "smoke", "--no-progress"])
    assert rc == 0
    run = tmp_path / "runs" / "smoke"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["steps"] == 80 // 16
    assert 0.0 <= summary["final_test_acc"] <= 1.0
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert "tract" in (run / "config.yaml").read_text()

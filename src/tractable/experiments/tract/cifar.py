"""The official TrAct CIFAR recipe (Felix-Petersen/tract ``examples/train_cifar.py``) as a runner config.

Same flags, defaults and semantics as the official script (spec ``tract.md`` §4.1), so its README commands work
after replacing ``python train_cifar.py`` with ``tractable tract-cifar``:

* ``--method normal|normal_34|normal_50|tract|tract_34|tract_50`` → ResNet-18/34/50 in the official CIFAR
  variant (3×3 stem, stride-2 maxpool kept), TrAct on ``conv1`` with ``--l``.
* ``--optim adam`` (no schedule) | ``adam_cosine`` | ``sgd_w_momentum_cosine`` (momentum 0.9); the cosine is
  stepped per iteration over ``n_epochs · len(loader)``; no weight decay, warm-up or label smoothing.
* Data: random crop 32 with padding 4 + horizontal flip (``--no_data_aug`` turns both off), normalised with
  the official CIFAR-10 statistics; training batches with ``drop_last=True`` as the official loader.

Deliberate differences: augmentation runs batched on the training device (airbench-style) instead of in
DataLoader workers, and the run is a resumable run directory with logs and checkpoints.
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from tractable.train.config import RunConfig, apply_overrides, config_from_dict

METHODS = {
    "normal": ("resnet18_tract_cifar", "normal"),
    "normal_34": ("resnet34_tract_cifar", "normal"),
    "normal_50": ("resnet50_tract_cifar", "normal"),
    "tract": ("resnet18_tract_cifar", "tract"),
    "tract_34": ("resnet34_tract_cifar", "tract"),
    "tract_50": ("resnet50_tract_cifar", "tract"),
}
OPTIMS = {
    "adam": ("adam", "none"),
    "adam_cosine": ("adam", "cosine"),
    "sgd_w_momentum_cosine": ("sgd", "cosine"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The official ``train_cifar.py`` flags (with their defaults) plus tractable's run options."""
    p.add_argument("-m", "--method", required=True, choices=list(METHODS),
                   help="model and method: normal/tract with ResNet-18, *_34 / *_50 for ResNet-34/50")
    p.add_argument("--l", type=float, default=0.1, help="TrAct's λ (default 0.1)")
    p.add_argument("--n_epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (README commands: 0.08 for SGD)")
    p.add_argument("--optim", default="sgd_w_momentum_cosine", choices=list(OPTIMS))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_data_aug", action="store_true", help="train with the test transform")
    p.add_argument("--no_cudnn", action="store_true", help="disable cuDNN")
    p.add_argument("--device", default="cuda", help="torch device (default cuda, as the official script)")
    g = p.add_argument_group("tractable run options")
    g.add_argument("--data-dir", default=None, help="dataset root (default $TRACTABLE_DATA or ~/.cache/tractable/data)")
    g.add_argument("--download", action="store_true", help="download the dataset archive if it is missing")
    g.add_argument("--out-dir", default="runs", help="parent of the run directory (default runs/)")
    g.add_argument("--name", default=None, help="run directory name (default: generated, never reused)")
    g.add_argument("--resume", action="store_true", help="continue the run --name from its last checkpoint")
    g.add_argument("--exact", action="store_true", help="exact TrAct statistics across ranks / micro-batches")
    g.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--subset", type=int, default=None, help="train on the first N images (smoke runs)")
    g.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test images")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("overrides", nargs="*", metavar="key=value",
                   help="further config overrides, e.g. train.save_every_steps=500")


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = ()) -> RunConfig:
    model, method = METHODS[args.method]
    optim, schedule = OPTIMS[args.optim]
    data = {
        "name": args.dataset, "root": args.data_dir, "download": args.download, "batch_size": args.batch_size,
        "eval_batch_size": 128 if args.device != "cpu" else 500, "augment": None if args.no_data_aug else "crop_flip",
        "drop_last": True, "subset": args.subset, "test_subset": args.test_subset,
        # the official script normalises both datasets with the CIFAR-10 statistics
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010],
    }
    cfg = {
        "data": data,
        "model": {"name": model},
        # λ and --exact are TrAct's options; like the official script, the baseline ignores --l
        "method": {"name": method, "l": args.l, "exact": args.exact} if method == "tract" else {"name": method},
        "optim": {"name": optim, "lr": args.lr, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"name": schedule},
        "train": {"epochs": args.n_epochs, "seed": args.seed, "device": args.device, "amp": args.amp,
                  "compile": args.compile, "progress": not args.no_progress},
        "out_dir": args.out_dir, "name": args.name, "resume": args.resume,
    }
    return config_from_dict(apply_overrides(cfg, list(args.overrides) + list(extra)))


def run(args: argparse.Namespace):
    import torch

    from tractable.train import train

    if args.no_cudnn:
        torch.backends.cudnn.enabled = False
    return train(config_from_args(args))


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tractable tract-cifar", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p.parse_args(argv)

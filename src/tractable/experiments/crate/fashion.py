"""Small-scale CRATE demonstration on Fashion-MNIST (docs/crate.md): a CRATE-T-shaped patch-4 model next to a ViT
of the same width and depth, several seeds, through the runner; then layer-wise R^c / sparsity and attention maps.

Setting (CPU budget; stated in docs/crate.md): 28×28 grey images, 4×4 patches (49 + 1 tokens); CRATE d = 384,
12 layers, 6 heads (5.36M parameters with 10 classes); the ViT is ``vit_cifar`` with the same d / depth / heads, the
standard 1/√d_h attention scale and a 4d MLP (21.3M parameters); both AdamW (lr 5e-4, wd 0.05, β (0.9, 0.999)),
batch 64, warm-up 0.5 epoch + cosine, label smoothing 0.1, no augmentation, the first ``subset`` training images
and the first ``test_subset`` test images.

    python -m tractable.experiments.crate.fashion --out runs/crate-fashion --seeds 0 1 --subset 2000 --epochs 4
    python -m tractable.experiments.crate.fashion --out runs/crate-fashion --report   # tables, curves, maps
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Sequence

MODELS = {
    "crate": {"name": "crate", "kwargs": {"patch_size": 4, "dim": 384, "depth": 12, "heads": 6}},
    "vit": {"name": "vit_cifar", "kwargs": {"patch_size": 4, "hidden": 384, "depth": 12, "heads": 6,
                                            "mlp_hidden": 1536, "attn_scale": "head", "mlp_out_gelu": False}},
}


def fashion_config(model: str, seed: int, out: Path, subset: int, test_subset: int, epochs: int,
                   lr: float = 5e-4) -> dict:
    return {
        "data": {"name": "fashion_mnist", "batch_size": 64, "eval_batch_size": 500, "subset": subset,
                 "test_subset": test_subset},
        "model": MODELS[model],
        "method": {"name": "normal"},
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": epochs, "seed": seed, "device": "cpu", "label_smoothing": 0.1, "progress": False,
                  "plots": False, "tensorboard": False, "log_every": 10, "save_every": 1},
        "out_dir": str(out),
        "name": f"{model}-s{seed}",
    }


def train_all(out: Path, seeds: Sequence[int], subset: int, test_subset: int, epochs: int,
              models: Sequence[str] = ("crate", "vit")) -> None:
    from tractable.train import train

    for seed in seeds:
        for model in models:
            run_dir = out / f"{model}-s{seed}"
            if (run_dir / "summary.json").is_file():
                continue
            cfg = fashion_config(model, seed, out, subset, test_subset, epochs)
            cfg["resume"] = run_dir.exists()
            res = train(cfg)
            print(json.dumps({"run": str(res.run_dir), "test_acc": res.summary.get("test_acc")}), flush=True)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/crate-fashion")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--models", nargs="+", default=["crate", "vit"], choices=sorted(MODELS))
    p.add_argument("--report", action="store_true", help="only write the report from finished runs")
    args = p.parse_args(argv)
    out = Path(args.out)
    if not args.report:
        train_all(out, args.seeds, args.subset, args.test_subset, args.epochs, args.models)
    else:
        from tractable.experiments.crate.commands import fashion_report

        print(fashion_report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

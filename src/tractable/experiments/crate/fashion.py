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
import math
from pathlib import Path
from typing import Dict, List, Sequence

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


def fashion_report(out, num: int = 256, maps_images: Sequence[int] = (0, 1, 2, 3, 4, 5), echo=print) -> str:
    """The docs/crate.md numbers from the runs of :mod:`tractable.experiments.crate.fashion` under ``out``."""
    import torch

    from tractable.experiments.crate.commands import (dataset_images, load_crate_model, measure_table,
                                                      plot_layer_curves, run_attention)
    from tractable.models import create_model
    from tractable.whitebox import measure_layers

    out = Path(out)
    acc: Dict[str, List[float]] = {}
    curves: Dict[str, List[List[float]]] = {}
    params: Dict[str, int] = {}
    time_s: Dict[str, List[float]] = {}
    for run in sorted(out.glob("*-s*")):
        s_file = run / "summary.json"
        if not s_file.is_file():
            continue
        s = json.loads(s_file.read_text())
        kind = run.name.rsplit("-s", 1)[0]
        acc.setdefault(kind, []).append(100 * s["final_test_acc"])
        curves.setdefault(kind, []).append([100 * a for a in s["test_acc"]])
        params[kind] = s["parameters"]
        time_s.setdefault(kind, []).append(s["train_time_s"])

    def ms(v):
        m = sum(v) / len(v)
        sd = math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        return m, sd

    lines = ["| model | parameters | seeds | test accuracy per epoch (%) | final (mean ± std) | train time / run |",
             "|---|---|---|---|---|---|"]
    for kind in acc:
        ep = len(curves[kind][0])
        per = " · ".join(f"{ms([c[e] for c in curves[kind]])[0]:.1f}" for e in range(ep))
        m, sd = ms(acc[kind])
        lines.append(f"| {kind} | {params[kind]:,} | {len(acc[kind])} | {per} | {m:.2f} ± {sd:.2f} | "
                     f"{ms(time_s[kind])[0]:.0f} s |")
    md = "\n".join(lines)

    series, series_init = {}, {}
    crate_runs = sorted(r for r in out.glob("crate-s*") if (r / "summary.json").is_file())
    rows = []
    for run in crate_runs:
        net, meta = load_crate_model(run)
        x, _, _ = dataset_images("fashion_mnist", "test", num=num)
        stats = [s.to_dict() for s in measure_layers(net, x.split(64))]
        series[run.name] = stats
        rows.append(stats)
        if not series_init:
            torch.manual_seed(0)
            init = create_model(meta["model"], **meta["model_kwargs"]).eval()
            series_init["random init"] = [s.to_dict() for s in measure_layers(init, x.split(64))]
    if rows:
        mean_stats = []
        for i in range(len(rows[0])):
            vals = [r[i] for r in rows]
            mean_stats.append({k: (sum(v[k] for v in vals) / len(vals) if k != "layer" else vals[0][k])
                               for k in vals[0]})
        md += ("\n\nLayer-wise measurements of the trained CRATE (mean over seeds; each seed's value is a mean "
               f"over {num} test images):\n\n" + measure_table(mean_stats))
        md += "\n\nSame at random initialisation:\n\n" + measure_table(series_init["random init"])
        try:
            plot_layer_curves({**series, **series_init}, out / "crate_fashion_layers.png",
                              f"CRATE-T-shaped patch-4 on Fashion-MNIST ({num} test images)")
            run_attention(crate_runs[0], [f"fashion_mnist:test:{','.join(map(str, maps_images))}"], pca=True,
                          out=str(out / "attention"), echo=echo)
        except ImportError as e:
            echo(f"(no plots: {e})")
        (out / "layers.json").write_text(json.dumps({**series, **series_init}, indent=2))
    (out / "report.md").write_text(md + "\n")
    return md


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
        print(fashion_report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The CRATE study at CPU scale (docs/crate.md): CRATE against ViTs matched in parameters and in FLOPs on
Fashion-MNIST, a logistic-regression floor, paired seeds, a λ sweep, R^c and sparsity per layer over training,
and a segmentation check (Jaccard of thresholded cls-attention masks against the garment's non-zero pixels).

Protocol (``--scale cpu``, the default; ``--scale full`` is the same study at a size that could settle the
question, see docs/crate.md):

* data: Fashion-MNIST 28×28 grey, the first ``subset`` training images, the first ``test_subset`` test images,
  standardised with the training mean/std, no augmentation; 4×4 patches (7×7 grid + cls = 50 tokens);
* CRATE: ``crate`` with d, L, K of the scale (cpu: 96, 4, 4 → 120,426 parameters; official init, η = λ = 0.1);
* ViT-params / ViT-flops: ``vit_cifar`` (separate q, k, v, o; 4× GELU MLP; 1/√d_h; final LayerNorm) with CRATE's
  depth, heads and patch size and the width (a multiple of the heads) whose parameter count, resp. forward
  FLOPs per image (``torch.utils.flop_counter``), is closest to CRATE's; the counts are in the report;
* every network: AdamW (lr 1e-3, wd 0.05, β (0.9, 0.999)), batch 64, ½-epoch warm-up then cosine, label
  smoothing 0.1, the same epochs, through the runner; seed s fixes the initialisation and the data order, so
  run pairs (CRATE s, ViT s) share the data order — differences are paired by seed;
* λ sweep: CRATE with ISTA λ ∈ ``lams`` (the same seeds), compared with λ = 0.1 paired by seed;
* floor: multinomial logistic regression on the standardised pixels of the same training images
  (:func:`tractable.experiments.crate.probe.fit_logistic`, L-BFGS, L2 chosen on a held-out tenth);
* over training: the CRATE (λ = 0.1) runs save a checkpoint every half epoch; ``crate-measure --over-training``
  measures R^c and the ISTA sparsity per layer at each of them on training and test images;
* segmentation: for ``jaccard_images`` test images, each head's cls attention at the last layer is thresholded
  at 60 % of its mass (:func:`tractable.whitebox.mass_threshold`), upsampled to 28×28 and compared with the
  object mask (pixels > 0; Fashion-MNIST's background is exactly 0) by Jaccard = |A ∩ F| / |A ∪ F|. Reported:
  the head average map, the mean over heads, and the best head (chosen on training images, scored on test
  images). The floor is a fixed mask: the mean training foreground thresholded the same way.

Intervals are 95 % Student-t intervals of the per-seed paired differences (n seeds − 1 degrees of freedom).

    python -m tractable.experiments.crate.fashion --out runs/crate-study            # train (resumable)
    python -m tractable.experiments.crate.fashion --out runs/crate-study --report   # tables, curves, maps
    python -m tractable.experiments.crate.fashion --out runs/crate-study-full --scale full --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["SCALES", "study_models", "study_config", "train_all", "report", "main"]

#: the two sizes of the study; ``full`` is one flag away (``--scale full``)
SCALES: Dict[str, dict] = {
    "cpu": {"subset": 10000, "test_subset": 5000, "epochs": 4, "seeds": (0, 1, 2), "lams": (1.0, 0.01),
            "dim": 96, "depth": 4, "heads": 4, "patch": 4, "batch": 64, "lr": 1e-3, "measure_images": 256,
            "jaccard_images": 500},
    "full": {"subset": None, "test_subset": None, "epochs": 50, "seeds": (0, 1, 2, 3, 4), "lams": (0.01, 1.0),
             "dim": 384, "depth": 12, "heads": 6, "patch": 4, "batch": 128, "lr": 5e-4, "measure_images": 1024,
             "jaccard_images": 10000},
    # the whole pipeline in seconds (tests): not a result
    "smoke": {"subset": 256, "test_subset": 128, "epochs": 1, "seeds": (0, 1), "lams": (1.0,), "dim": 16, "depth": 2,
              "heads": 2, "patch": 4, "batch": 64, "lr": 1e-3, "measure_images": 32, "jaccard_images": 32},
}


def _counts(name: str, kwargs: dict):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tractable.models import create_model

    m = create_model(name, num_classes=10, in_channels=1, image_size=28, **kwargs).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(torch.zeros(1, 1, 28, 28))
    return sum(p.numel() for p in m.parameters()), int(fc.get_total_flops())


def _vit_kwargs(hidden: int, s: dict) -> dict:
    return {"patch_size": s["patch"], "hidden": hidden, "mlp_hidden": 4 * hidden, "heads": s["heads"],
            "depth": s["depth"], "attn_scale": "head", "mlp_out_gelu": False}


def study_models(scale: str = "cpu") -> Dict[str, dict]:
    """``{kind: {"name", "kwargs", "parameters", "flops"}}`` for crate, vit_params and vit_flops (widths searched)."""
    s = SCALES[scale]
    crate = {"name": "crate", "kwargs": {"patch_size": s["patch"], "dim": s["dim"], "depth": s["depth"],
                                         "heads": s["heads"]}}
    p, f = _counts("crate", crate["kwargs"])
    out = {"crate": {**crate, "parameters": p, "flops": f}}
    cands = []
    for h in range(s["heads"], 2 * s["dim"] + 1, s["heads"]):
        if h % 2:
            continue
        kw = _vit_kwargs(h, s)
        cands.append((h, *_counts("vit_cifar", kw)))
    for kind, idx, target in (("vit_params", 1, p), ("vit_flops", 2, f)):
        h, vp, vf = min(cands, key=lambda c: abs(c[idx] - target))
        out[kind] = {"name": "vit_cifar", "kwargs": _vit_kwargs(h, s), "parameters": vp, "flops": vf}
    return out


def study_config(kind: str, model: dict, seed: int, out: Path, scale: str = "cpu", lam: Optional[float] = None,
                 checkpoints: bool = False, device: str = "cpu") -> dict:
    s = SCALES[scale]
    kwargs = dict(model["kwargs"])
    name = f"{kind}-s{seed}"
    if lam is not None:
        kwargs["lam"] = lam
        name = f"crate-lam{lam:g}-s{seed}"
    n_train = s["subset"] or 60000
    steps_per_epoch = n_train // s["batch"]
    train = {"epochs": s["epochs"], "seed": seed, "device": device, "label_smoothing": 0.1, "progress": False,
             "plots": False, "tensorboard": False, "log_every": 50, "save_every": s["epochs"],
             "eval_every": s["epochs"]}
    if checkpoints:  # for the curves over training: a checkpoint every half epoch, all kept
        train.update(save_every_steps=max(1, steps_per_epoch // 2), keep_checkpoints=1000)
    return {
        "data": {"name": "fashion_mnist", "batch_size": s["batch"], "eval_batch_size": 500, "subset": s["subset"],
                 "test_subset": s["test_subset"]},
        "model": {"name": model["name"], "kwargs": kwargs},
        "method": {"name": "normal"},
        "optim": {"name": "adamw", "lr": s["lr"], "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": train,
        "out_dir": str(out),
        "name": name,
    }


def _train_one(cfg: dict, echo) -> None:
    from tractable.train import config_from_dict, train

    run_dir = Path(cfg["out_dir"]) / cfg["name"]
    if (run_dir / "summary.json").is_file():
        return
    if run_dir.exists():  # interrupted: continue it
        cfg = {**cfg, "resume": True}
    t0 = time.time()
    res = train(config_from_dict(cfg))
    echo(json.dumps({"run": cfg["name"], "test_acc": res.summary.get("final_test_acc"),
                     "wall_s": round(time.time() - t0, 1), "train_time_s": res.summary.get("train_time_s")}))


def train_all(out, scale: str = "cpu", device: str = "cpu", echo=print) -> None:
    """Train every run of the study under ``out`` (finished runs are skipped, interrupted ones resumed).
    Order: seed by seed the three models, then the λ sweep — so a cut-short study still has paired seeds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = SCALES[scale]
    models = study_models(scale)
    (out / "models.json").write_text(json.dumps({"scale": scale, "setting": s, "models": models}, indent=2,
                                                default=list))
    for seed in s["seeds"]:
        for kind in ("crate", "vit_params", "vit_flops"):
            _train_one(study_config(kind, models[kind], seed, out, scale, checkpoints=kind == "crate", device=device),
                       echo)
    for lam in s["lams"]:
        for seed in s["seeds"]:
            _train_one(study_config("crate", models["crate"], seed, out, scale, lam=lam, device=device), echo)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/crate-study")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                   help="cpu: ~20 CPU-minutes at 1 thread; full: all 60k images, CRATE-T-sized, 50 epochs, 5 seeds")
    p.add_argument("--device", default="cpu", help="train.device of every run (cpu, cuda, auto; default cpu)")
    p.add_argument("--report", action="store_true", help="only write the report from the finished runs")
    args = p.parse_args(argv)
    if args.report:
        from tractable.experiments.crate.study_report import report

        print(report(Path(args.out)))
    else:
        train_all(Path(args.out), args.scale, args.device)
    return 0


def report(out, echo=print) -> str:  # re-exported for callers of the module
    from tractable.experiments.crate.study_report import report as _report

    return _report(Path(out), echo=echo)


if __name__ == "__main__":
    raise SystemExit(main())

"""``tractable demo`` section: a small CRATE on digits and its final-layer sparsity.

A CRATE with d = 64, 4 layers, 4 heads on scikit-learn's 8×8 digits cut into 2×2 patches (16 + 1 tokens), AdamW
(lr 2e-3, wd 0.05), batch 32, 8 epochs, through the runner, for ``min(seeds, 3)`` seeds; then, on the 360 test
images, the test accuracy and the non-zero fraction ‖Z^{L+1}‖₀/(n·d) of the last ISTA output together with
R^c of the first and last layer (:mod:`tractable.whitebox`), next to the same model at initialisation.
About 20-30 s on 2 CPU cores.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List

import torch

from tractable.train.config import config_from_dict

MODEL = {"name": "crate", "kwargs": {"patch_size": 2, "dim": 64, "depth": 4, "heads": 4}}
EPOCHS = 8
MAX_SEEDS = 3


def _config(seed: int, root: Path) -> dict:
    return {
        "data": {"name": "digits", "batch_size": 32, "eval_batch_size": 512},
        "model": MODEL,
        "method": {"name": "normal"},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": EPOCHS, "seed": seed, "device": "cpu", "progress": False, "plots": False,
                  "save_every": 0, "log_every": 1000, "tensorboard": False},
        "out_dir": str(root),
        "name": f"crate-digits-s{seed}",
    }


def _ms(v: List[float]):
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def crate_section(seeds: int = 3, root=None, echo=print) -> str:
    """Train, measure, print and return the Markdown section (see the module docstring)."""
    from tractable.data import load_dataset
    from tractable.data.convert import to_float
    from tractable.models import create_model
    from tractable.train import train
    from tractable.whitebox import measure_layers

    root = Path(root or "runs")
    n_seeds = max(1, min(int(seeds), MAX_SEEDS))
    t0 = time.time()
    test = load_dataset("digits", "test")
    m = torch.tensor(test.info.mean).view(1, -1, 1, 1)
    s = torch.tensor(test.info.std).view(1, -1, 1, 1)
    x = (to_float(test.x) - m) / s
    rows: Dict[str, List[List[float]]] = {"trained": [], "init": []}
    for seed in range(n_seeds):
        res = train(config_from_dict(_config(seed, root)))
        torch.manual_seed(seed)
        init = create_model("crate", num_classes=10, in_channels=1, image_size=8, **MODEL["kwargs"])
        for key, net, acc in (("trained", res.model.cpu(), 100 * res.summary["final_test_acc"]), ("init", init, None)):
            stats = measure_layers(net, x)
            rows[key].append([acc if acc is not None else float("nan"), stats[-1].nonzero_mean, stats[0].rc_mean,
                              stats[-1].rc_mean])
    lines = ["| CRATE d=64, L=4, 2×2 patches | test acc. (%) | non-zero fraction of the last ISTA output | "
             "R^c layer 1 | R^c layer 4 |", "|---|---|---|---|---|"]
    for key, label in (("init", "at initialisation"), ("trained", f"after {EPOCHS} epochs")):
        cells = []
        for j in range(4):
            vals = [r[j] for r in rows[key]]
            if any(math.isnan(v) for v in vals):
                cells.append("–")
                continue
            mu, sd = _ms(vals)
            cells.append(f"{mu:.1f} ± {sd:.1f}" if j in (0, 2, 3) else f"{mu:.3f} ± {sd:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    nz0, nz1 = (_ms([r[1] for r in rows[k]])[0] for k in ("init", "trained"))
    rc0, rc1 = (_ms([r[3] for r in rows[k]])[0] for k in ("init", "trained"))
    note = (f"CRATE on digits (mean ± std over {n_seeds} seeds, 360 test images; R^c as the official code measures "
            f"it, see `tractable crate-measure`). What this shows: after training {100 * (1 - nz1):.0f} % of the "
            f"last ISTA output's entries are exactly zero ({100 * (1 - nz0):.0f} % at initialisation), and the "
            f"last layer's R^c went from {rc0:.1f} to {rc1:.1f}. {time.time() - t0:.0f} s.")
    heading = "### CRATE (white-box transformer)"
    echo(f"{heading}\n\n{table}")
    echo(note)
    return f"{heading}\n\n{table}\n\n{note}\n"

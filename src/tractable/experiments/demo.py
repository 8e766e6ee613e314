"""``tractable demo``: the main job — every learning rule on one small real dataset, several seeds, one table.

Setting (chosen so that TrAct's effect is resolvable on 2 CPU cores in about two minutes, see the README; a
selected setting, not a typical one — docs/tract.md has TrAct on real-image ViTs and ResNets):
scikit-learn's bundled *digits* (1797 8×8 images, a deterministic 1437/360 split, standardised), an MLP
64→256→256→10 whose first layer is the TrAct layer, Adam (lr 1e-3), batch 32, 6 epochs, seeds 0…N−1.
Every row trains through the runner (:func:`tractable.train.train`) into its own run directory.

Each method family adds its row to :data:`ROWS`. The table reports test accuracy per epoch as mean ± std
over seeds, and a closing line states the difference to plain backprop after the first and the last epoch with
its 95 % t interval over paired seeds.

Families whose result is not a per-epoch accuracy curve of the same MLP (subspace midpoints, CRATE's sparsity,
…) add a *section* to :data:`SECTIONS`: ``"module:function"``, called after the table as
``function(seeds=..., root=..., echo=...)``; it trains what it needs under ``root``, prints its own short table
through ``echo`` and returns it as Markdown (appended to ``demo.md``). Each section must stay within about
40 seconds on 2 CPU cores: the whole demo stays under five minutes.
"""
from __future__ import annotations

import importlib
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tractable.stats import t_interval
from tractable.train.config import apply_overrides, config_from_dict
from tractable.train.report import new_figure, save_figure


@dataclass
class DemoRow:
    """One row of the demo table: a label and the config overrides that select the method."""

    label: str
    overrides: List[str] = field(default_factory=list)


ROWS: List[DemoRow] = [
    DemoRow("backprop (plain)", ["method.name=normal"]),
    DemoRow("TrAct λ=0.1", ["method.name=tract", "method.l=0.1"]),
    DemoRow("feedback alignment (FA)", ["method.name=fa"]),
    DemoRow("direct feedback alignment (DFA)", ["method.name=dfa"]),
]

#: extra demo sections, ``"module:function"`` (see the module docstring), run in this order after the table
SECTIONS: List[str] = ["tractable.experiments.subspace.demo:demo_section",
                       "tractable.experiments.crate.demo:crate_section",
                       "tractable.experiments.diffusion.study:demo_section"]

BASE = {
    "data": {"name": "digits", "batch_size": 32, "eval_batch_size": 512},
    "model": {"name": "mlp", "kwargs": {"hidden": [256, 256]}},
    "optim": {"name": "adam", "lr": 1e-3},
    "schedule": {"name": "none"},
    "train": {"epochs": 6, "device": "cpu", "progress": False, "plots": False, "save_every": 0,
              "log_every": 1000, "tensorboard": False},
}


def demo_config(row: DemoRow, seed: int, out_dir: Path, epochs: int, extra: Sequence[str] = ()):
    data = apply_overrides(BASE, [f"train.seed={seed}", f"train.epochs={epochs}", f"out_dir={out_dir}",
                                  f"name={_slug(row.label)}-s{seed}", *row.overrides, *extra])
    return config_from_dict(data)


def _slug(text: str) -> str:
    """An ASCII directory name for a row label ("TrAct λ=0.1" → "tract-lambda-0-1")."""
    text = text.lower().replace("λ", "lambda")
    return re.sub(r"-+", "-", "".join(c if c.isascii() and c.isalnum() else "-" for c in text)).strip("-")


def _mean_std(values: Sequence[float]):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def run_demo(seeds: int = 10, epochs: int = 6, out_dir: Optional[str] = None, rows: Optional[List[DemoRow]] = None,
             plot: bool = True, extra: Sequence[str] = (), echo=print, sections: bool = True) -> Dict[str, List[List[float]]]:
    """Train every row for ``seeds`` seeds; print the table; return ``{label: [per-seed accuracy curves]}``."""
    from tractable.train import train

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:  # every check before any work
        raise ValueError(f"demo --seeds: the number of seeds per row must be >= 1, got {seeds!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"demo --epochs: must be >= 1, got {epochs!r}")
    rows = ROWS if rows is None else rows
    if extra:  # the overrides must make a valid config before anything is trained
        demo_config(rows[0], 0, Path(out_dir or "runs"), epochs, extra)
    root = Path(out_dir or "runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    i = 1
    while root.exists():
        i += 1
        root = root.with_name(f"{root.name.split('~')[0]}~{i}")
    t0 = time.time()
    curves: Dict[str, List[List[float]]] = {}
    echo(f"tractable demo: digits (sklearn, offline), MLP 64-256-256-10, Adam 1e-3, batch 32, {epochs} epochs, "
         f"{seeds} seeds per row -> {root}")
    for row in rows:
        for seed in range(seeds):
            res = train(demo_config(row, seed, root, epochs, extra))
            curve = [100.0 * a for a in res.summary["test_acc"]]
            curves.setdefault(row.label, []).append(curve)
        final = _mean_std([c[-1] for c in curves[row.label]])
        echo(f"  {row.label:<22s} final test accuracy {final[0]:.2f} ± {final[1]:.2f} %  ({time.time() - t0:.0f} s)")
    table = format_table(curves, epochs)
    echo("")
    echo(table)
    echo("")
    echo(verdict(curves))
    markdown = table + "\n\n" + verdict(curves) + "\n"
    for spec in SECTIONS if sections else ():
        module, _, func = spec.partition(":")
        echo("")
        section = getattr(importlib.import_module(module), func)(seeds=seeds, root=root, echo=echo)
        markdown += "\n" + section.rstrip() + "\n"
    (root / "demo.md").write_text(markdown)
    if plot:
        try:
            path = plot_curves(curves, root / "demo.png")
            echo(f"plot: {path}")
        except ImportError as e:
            echo(f"(no plot: {e})")
    echo(f"total time {time.time() - t0:.0f} s; run directories under {root}")
    return curves


def format_table(curves: Dict[str, List[List[float]]], epochs: int) -> str:
    head = "| method | " + " | ".join(f"ep {e + 1}" for e in range(epochs)) + " |"
    sep = "|---|" + "---|" * epochs
    lines = [head, sep]
    for label, runs in curves.items():
        cells = []
        for e in range(epochs):
            m, s = _mean_std([r[e] for r in runs])
            cells.append(f"{m:.1f} ± {s:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    n = len(next(iter(curves.values())))
    lines.append(f"\ntest accuracy (%) on digits, mean ± std over {n} seeds")
    return "\n".join(lines)


def verdict(curves: Dict[str, List[List[float]]]) -> str:
    """One line: each method's final and first-epoch difference to the first row, with its standard error."""
    labels = list(curves)
    base = curves[labels[0]]
    parts = []
    for label in labels[1:]:
        runs = curves[label]
        out = []
        for e, name in ((0, "after epoch 1"), (-1, "at the end")):
            d = t_interval([r[e] - b[e] for r, b in zip(runs, base)])  # paired by seed
            sig = "resolved" if d["lo"] > 0 or d["hi"] < 0 else "not resolved"
            out.append(f"{d['mean']:+.2f} pp {name} (95 % CI [{d['lo']:+.2f}, {d['hi']:+.2f}], {sig})")
        parts.append(f"{label} vs {labels[0]}: " + ", ".join(out))
    return ("What this shows: " + "; ".join(parts) + " — paired over seeds; 'resolved' means the 95 % t interval "
            "excludes 0. Digits and this MLP only: TrAct on real-image ViTs and ResNets is measured by "
            "`tractable tract-study` (docs/tract.md).")


def plot_curves(curves: Dict[str, List[List[float]]], path: Path) -> Path:
    fig, ax = new_figure((6, 4))
    for label, runs in curves.items():
        epochs = range(1, len(runs[0]) + 1)
        stats = [_mean_std([r[e] for r in runs]) for e in range(len(runs[0]))]
        m = [s[0] for s in stats]
        sd = [s[1] for s in stats]
        ax.plot(epochs, m, marker="o", label=label)
        ax.fill_between(epochs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits, MLP, mean ± std over {len(next(iter(curves.values())))} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=120)

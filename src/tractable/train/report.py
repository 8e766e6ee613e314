"""Reading finished (or running) run directories: curves as PNGs and side-by-side comparisons.

* :func:`plot_run` — ``run_dir/plots/{loss,accuracy,lr}.png`` from ``metrics.jsonl`` (accuracy only when the
  run logged ``acc``-type metrics; ``tract_diagnostics.png`` when it logged TrAct diagnostics);
* :func:`compare_runs` — a markdown table of final/best metrics per run (best = lowest or highest, as the metric
  declares in :mod:`tractable.train.directions`; none for a metric without a direction), followed by the config
  keys whose values differ between the runs. The runs must share the task, dataset, input shape and classes;
* :func:`plot_compare` — one figure with the test metric of several runs per epoch.

matplotlib is imported lazily (``pip install 'tractable[plot]'``); compare_runs needs only the standard library.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from tractable.train.directions import metric_direction
from tractable.train.metrics_log import read_metrics

__all__ = ["plot_run", "compare_runs", "plot_compare", "read_summary", "new_figure"]

PathLike = Union[str, Path]


def new_figure(figsize, nrows: int = 1, ncols: int = 1, **subplots_kw):
    """``(fig, axes)``: a matplotlib Figure with its subplots (``Figure.subplots`` arguments), made without
    pyplot, so no global backend or figure state is touched (nothing to close; the figure is garbage once
    saved). Every plot of the package is drawn on one of these."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'tractable[plot]'") from e
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig, path: PathLike, dpi: int = 100) -> Path:
    """Lay out ``fig`` (``tight_layout``), write it to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def read_summary(run_dir: PathLike) -> Dict[str, Any]:
    """``run_dir/summary.json`` ({} if the run has not finished)."""
    p = Path(run_dir) / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _series(records, kind: str, x: str, y: str):
    pts = [(r[x], r[y]) for r in records
           if r.get("kind") == kind and isinstance(r.get(y), (int, float)) and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: PathLike) -> List[Path]:
    """Write loss / accuracy / learning-rate curves under ``run_dir/plots/``; returns the PNG paths."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"plot_run: no metrics in {run_dir / 'metrics.jsonl'}")
    new_figure((1, 1))  # fail early with the install hint
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    epoch_keys = sorted({k for r in records if r.get("kind") == "epoch" for k in r})
    steps_per_epoch = _steps_per_epoch(records)

    def save(fig, name):
        written.append(save_figure(fig, out_dir / name))

    # loss: per-step training loss against epochs, per-epoch train/test loss
    fig, ax = new_figure((6, 4))
    xs, ys = _series(records, "step", "step", "loss")
    if xs:
        ax.plot([s / steps_per_epoch for s in xs], ys, lw=0.8, alpha=0.5, label="train (step)")
    def epoch_curves(ax, keys, ylabel):
        for key in keys:
            ex, ey = _series(records, "epoch", "epoch", key)
            ax.plot(ex, ey, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(run_dir.name, fontsize=9)
        ax.legend(fontsize=8)

    epoch_curves(ax, [k for k in epoch_keys if k.endswith("loss")], "loss")
    save(fig, "loss.png")

    acc_keys = [k for k in epoch_keys if k.endswith("acc") or k.endswith("acc5")]
    if acc_keys:
        fig, ax = new_figure((6, 4))
        epoch_curves(ax, acc_keys, "accuracy")
        save(fig, "accuracy.png")

    diag_keys = sorted({k for r in records if r.get("kind") == "step" for k in r if k.startswith("tract_")})
    if diag_keys:  # TrAct diagnostics (method.diag_every), one panel each against epochs
        fig, axes = new_figure((4.2 * min(3, len(diag_keys)), 3.0 * ((len(diag_keys) + 2) // 3)),
                               (len(diag_keys) + 2) // 3, min(3, len(diag_keys)), squeeze=False)
        for ax, key in zip([a for row in axes for a in row], diag_keys):
            xs, ys = _series(records, "step", "step", key)
            ax.plot([s / steps_per_epoch for s in xs], ys, marker=".", ms=3, lw=0.8)
            if key in ("tract_cond", "tract_cond_k") and ys and min(ys) > 0:
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(key, fontsize=9)
        for ax in [a for row in axes for a in row][len(diag_keys):]:
            ax.set_visible(False)
        fig.suptitle(f"{run_dir.name}: TrAct layer diagnostics", fontsize=9)
        save(fig, "tract_diagnostics.png")

    xs, ys = _series(records, "step", "step", "lr")
    if not xs:  # no step records (log_every larger than the run): the lr at the end of each epoch
        xs, ys = _series(records, "epoch", "step", "lr")
    if xs:
        fig, ax = new_figure((6, 3))
        ax.plot(xs, ys)
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.set_title(run_dir.name, fontsize=9)
        save(fig, "lr.png")
    written += _plot_groups(records, run_dir, out_dir)
    return written


def _plot_groups(records, run_dir: Path, out_dir: Path) -> List[Path]:
    """Step scalars named ``<group>/<item>/<quantity>`` (e.g. ``align/fc1/grad_angle``, logged by hooks): one
    PNG per group, one panel per quantity, one line per item."""
    groups: Dict[str, Dict[str, List[str]]] = {}
    for r in records:
        if r.get("kind") != "step":
            continue
        for k in r:
            parts = k.split("/")
            if len(parts) == 3:
                groups.setdefault(parts[0], {}).setdefault(parts[2], [])
                if k not in groups[parts[0]][parts[2]]:
                    groups[parts[0]][parts[2]].append(k)
    written = []
    for group, quantities in sorted(groups.items()):
        names = sorted(quantities)
        fig, axes = new_figure((4.5 * len(names), 3.5), 1, len(names), squeeze=False)
        for ax, q in zip(axes[0], names):
            for key in quantities[q]:
                xs, ys = _series(records, "step", "step", key)
                ax.plot(xs, ys, lw=1, label=key.split("/")[1])
            ax.set_xlabel("step")
            ax.set_ylabel(q)
            ax.set_title(f"{run_dir.name}: {group}", fontsize=8)
            ax.legend(fontsize=6)
        written.append(save_figure(fig, out_dir / f"{group}.png"))
    return written


def _steps_per_epoch(records) -> float:
    for r in records:
        if r.get("kind") == "epoch" and r.get("epoch"):
            return max(1.0, r["step"] / r["epoch"])
    return 1.0


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _config(run_dir: Path) -> Dict[str, Any]:
    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    with open(p) as f:
        return _flatten(yaml.safe_load(f) or {})


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    return str(v).replace("|", "\\|")


def _run_metrics(run_dir: Path) -> Dict[str, Any]:
    """Final and best per-epoch metrics, from summary.json when present, else from metrics.jsonl."""
    records = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]
    out: Dict[str, Any] = {}
    summary = read_summary(run_dir)
    test_keys = sorted({k for r in records for k in r if k.startswith(("test_", "ema_test_"))},
                       key=lambda k: (k.startswith("ema_"), k))
    for k in test_keys:
        vals = [r[k] for r in records if isinstance(r.get(k), (int, float))]
        if not vals:
            continue
        out[f"final {k}"] = vals[-1]
        direction = metric_direction(k)  # a metric without a declared direction gets no "best"
        if direction == "min":
            out[f"best {k} (lowest)"] = min(vals)
        elif direction == "max":
            out[f"best {k} (highest)"] = max(vals)
    train_keys = sorted({k for r in records for k in r if k.startswith("train_")})
    for k in train_keys:
        vals = [r[k] for r in records if isinstance(r.get(k), (int, float))]
        if vals:
            out[f"final {k}"] = vals[-1]
    out["epochs"] = summary.get("epochs", records[-1]["epoch"] if records else None)
    out["time (s)"] = summary.get("time_s")
    out["images/s"] = summary.get("images_per_s")
    return out


def _check_runs(run_dirs: Sequence[PathLike], what: str) -> List[Path]:
    """Run directories to compare: each one has a ``config.yaml`` and logged metrics, and all share the dataset,
    the input shape and the classes (one-line errors naming the directory)."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError(f"{what}: give at least one run directory")
    keys = []
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"{what}: {d} is not a directory")
        if not (d / "config.yaml").is_file() or not (d / "metrics.jsonl").is_file():
            raise FileNotFoundError(f"{what}: {d} is not a run directory (expected config.yaml and metrics.jsonl, as "
                                    "`tractable train` or `tractable ensemble-eval` write them)")
        keys.append(_data_key(d))
    for d, k in zip(dirs[1:], keys[1:]):
        diff = [f"{name} {keys[0].get(name)!r} vs {k.get(name)!r}" for name in keys[0] if keys[0].get(name) != k.get(name)]
        if diff:
            raise ValueError(f"{what}: {d} was not trained on the same data as {dirs[0]} ({'; '.join(diff)}); only "
                             "runs on the same dataset, input shape and classes are compared")
    return dirs


def _data_key(run_dir: Path) -> Dict[str, Any]:
    """What must agree between compared runs: the task, the dataset and its test-set options, and the model's
    input shape and classes when the config fixes them."""
    try:
        with open(run_dir / "config.yaml") as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        raise ValueError(f"{run_dir / 'config.yaml'}: not a readable YAML file") from None
    data = cfg.get("data") or {}
    model_kw = (cfg.get("model") or {}).get("kwargs") or {}
    return {"task": cfg.get("task", "classification"), "data.name": data.get("name"),
            "data.kwargs": data.get("kwargs") or {}, "data.test_subset": data.get("test_subset"),
            "num_classes": model_kw.get("num_classes"), "in_channels": model_kw.get("in_channels"),
            "image_size": model_kw.get("image_size")}


def compare_runs(run_dirs: Sequence[PathLike]) -> str:
    """Markdown: one column per run with final/best metrics, then the config keys that differ."""
    dirs = _check_runs(run_dirs, "compare")
    names = [d.name for d in dirs]
    metrics = [_run_metrics(d) for d in dirs]
    rows: List[str] = []
    for m in metrics:
        for k in m:
            if k not in rows:
                rows.append(k)
    head = "| metric | " + " | ".join(_fmt(n) for n in names) + " |"
    sep = "|---|" + "---|" * len(names)
    lines = [head, sep]
    for k in rows:
        lines.append(f"| {k} | " + " | ".join(_fmt(m.get(k)) for m in metrics) + " |")
    configs = [_config(d) for d in dirs]
    keys: List[str] = []
    for c in configs:
        for k in c:
            if k not in keys:
                keys.append(k)
    differ = [k for k in keys if k != "name" and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    lines.append("")
    if differ:
        lines.append("| config | " + " | ".join(_fmt(n) for n in names) + " |")
        lines.append(sep)
        for k in differ:
            lines.append(f"| {k} | " + " | ".join(_fmt(c.get(k)) for c in configs) + " |")
    else:
        lines.append("(configs identical apart from the run name)" if len(dirs) > 1 else "")
    return "\n".join(lines).rstrip() + "\n"


def plot_compare(run_dirs: Sequence[PathLike], path: PathLike, metric: Optional[str] = None) -> Path:
    """One figure with ``metric`` (default ``test_acc``, else ``test_loss``) per epoch for each run."""
    dirs = _check_runs(run_dirs, "plot_compare")
    runs = [(d.name, read_metrics(d)) for d in dirs]
    if metric is None:
        has_acc = any(r.get("kind") == "epoch" and "test_acc" in r for _, recs in runs for r in recs)
        metric = "test_acc" if has_acc else "test_loss"
    fig, ax = new_figure((6, 4))
    plotted = 0
    for name, recs in runs:
        xs, ys = _series(recs, "epoch", "epoch", metric)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=name)
            plotted += 1
    if not plotted:
        raise ValueError(f"plot_compare: no run logged {metric!r} per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    return save_figure(fig, path)

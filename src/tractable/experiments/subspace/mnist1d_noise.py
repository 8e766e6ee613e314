"""The subspace paper's label-noise claim on MNIST-1D: does a line's midpoint resist noisy labels better than
standard training, SWA, a layerwise line, early stopping and an ensemble of two?

Protocol (every number below is an option; the defaults are the documented run):

* Data: MNIST-1D (``mnist1d`` package, generated offline: 4,000 training / 1,000 test signals of length 40,
  10 classes). Label noise p ∈ {0, 0.3}: one fixed permutation (seed 0, the same for every training seed); its
  first ⌊n·p⌋ training labels are redrawn uniformly from the 10 classes
  (:func:`tractable.data.label_noise.noisy_labels`). Test labels stay clean.
* Model: a small BN CNN for 1-D signals (three conv-BN-ReLU blocks, kernels 5/3/3, the last two with stride 2,
  ``width`` channels, flatten, linear head; 31,370 parameters at width 64), defined in this module.
* Training: SGD (momentum 0.9, weight decay 1e-4, batch 128, lr 0.1), one linear warm-up epoch then cosine to 0,
  per step; no augmentation. Budgets {8, 15, 30, 60} epochs: one run per budget, each with its own schedule.
* Methods, all with the same budget and schedule:
  - ``standard``: one network; a second one from another initialisation (``standard_b``) gives the ensemble
    of two independently trained networks (twice the training compute);
  - ``line``: :func:`tractable.subspace.convert` ``kind="line"``, α ~ U[0, 1] per step, β = 1;
  - ``layerwise``: the same with one α per module per step (evaluated with one α for every layer);
  - ``swa``: :mod:`torch.optim.swa_utils` averaging at the end of every epoch from ⌊0.75·epochs⌋ on at a constant
    lr of 0.05 (half the peak, the paper's ratio), then ``update_bn``.
* Evaluation (clean test set): accuracy, NLL, ECE (20 bins). Lines: every α on a grid of step 0.25 with its own
  BatchNorm statistics (recomputed over the whole training set), the endpoints, the ensemble of the two
  endpoints (logit average) and the midpoint with the training-time (mixture) statistics.
* Comparisons, paired by seed (seed s trains every method of that cell from its own initialisation): equal
  budget (method − standard at the same budget), and against the best standard run over all budgets of that
  seed (*oracle* early stopping: chosen on the test set, so it flatters the baseline). Mean difference with a
  95 % t interval over seeds; an effect is called only where the interval excludes zero.

Everything trains in one process with plain tensors (no runner): the few thousand signals stay in memory.
Each finished run is cached in ``OUT/runs.json``, so an interrupted study continues where it stopped.
Results: ``OUT/results.json``, ``OUT/results.md`` and ``OUT/*.png``.

    python -m tractable.experiments.subspace.mnist1d_noise --out runs/subspace-mnist1d        # ~20 CPU-min
    python -m tractable.experiments.subspace.mnist1d_noise --out runs/s --seeds 5 --budgets 8 15 30 60 120
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.stats import t_interval

__all__ = ["BNCNN1d", "STUDY_METHODS", "train_one", "evaluate_one", "run", "main"]

STUDY_METHODS = ("standard", "standard_b", "line", "layerwise", "swa")


class BNCNN1d(nn.Module):
    """conv(k5)-BN-ReLU → conv(k3, stride 2)-BN-ReLU → conv(k3, stride 2)-BN-ReLU → flatten → ``fc``."""

    def __init__(self, width: int = 64, length: int = 40, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.conv3 = nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm1d(width)
        out = ((length - 1) // 2) // 2 + 1
        self.fc = nn.Linear(width * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


def _data(noise: float, noise_seed: int = 0):
    from tractable.data import load_mnist1d
    from tractable.data.label_noise import noisy_labels

    tr, te = load_mnist1d("train", None), load_mnist1d("test", None)
    y = tr.y
    if noise > 0:
        y, _ = noisy_labels(tr.y, noise, 10, noise_seed)
    return tr.x.float(), y, te.x.float(), te.y


def _batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)]


def _lr(step: int, total: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * lr * (1 + math.cos(math.pi * t))


def train_one(method: str, epochs: int, seed: int, data, *, width: int = 64, lr: float = 0.1, wd: float = 1e-4,
              batch: int = 128, beta: float = 1.0, swa_start: float = 0.75, swa_lr: float = 0.05):
    """Train one network (or line) and return ``(model, sub_or_None)``; SWA returns the averaged network with
    its BatchNorm statistics updated."""
    from torch.optim.swa_utils import AveragedModel, update_bn

    import tractable.subspace as ts

    x, y, _, _ = data
    n = x.shape[0]
    init_seed = seed + (10_000 if method == "standard_b" else 0)

    def make():
        return BNCNN1d(width)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = make()
        sub = None
        if method in ("line", "layerwise"):
            sub = ts.convert(model, make, kind="line", layerwise=method == "layerwise")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    shuffle = torch.Generator().manual_seed(seed)
    steps_per_epoch = n // batch  # the remainder is dropped (fresh order every epoch)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    avg = AveragedModel(model) if method == "swa" else None
    start = min(int(swa_start * epochs), epochs - 1)
    step = 0
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=shuffle)
        for b in range(steps_per_epoch):
            idx = perm[b * batch:(b + 1) * batch]
            rate = swa_lr if (avg is not None and epoch >= start) else _lr(step, total, warmup, lr)
            for group in opt.param_groups:
                group["lr"] = rate
            loss = 0.0
            if sub is not None:
                g = torch.Generator().manual_seed(seed * 1_000_003 + step)
                # the regulariser first: its gradient reaches the stored points directly (see docs/subspaces.md)
                loss = sub.regularizer(beta, generator=g)
                sub.sample(g)
            loss = loss + F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if avg is not None and epoch >= start:
            avg.update_parameters(model)
    if avg is not None:
        update_bn(_batches(x, y, 500), avg)  # a list of (x, y): update_bn uses the first element
        model = avg.module
    return model, sub


def _predict(model, batches):
    from tractable.subspace import predict

    return predict(model, batches)


def evaluate_one(model, sub, data, *, step: float = 0.25) -> Dict[str, Any]:
    """Metrics on the clean test set; a line on the α grid with per-point BatchNorm statistics."""
    from tractable.subspace import classification_metrics, evaluate_grid

    x, y, xt, yt = data
    train_b, test_b = _batches(x, y, 500), _batches(xt, yt, 500)
    if sub is None:
        return {"model": classification_metrics(*_predict(model, test_b))}
    res = evaluate_grid(sub, train_b, test_b, step=step)
    keep = {"midpoint": res["midpoint"], "midpoint_mixture_bn": res["midpoint_mixture_bn"],
            "endpoints": res["endpoints"], "points": res["points"],
            "endpoint_ensemble": {"acc": res["endpoint_ensemble"]["ens_acc"],
                                  "nll": res["endpoint_ensemble"]["ens_nll"],
                                  "ece": res["endpoint_ensemble"]["ens_ece"]},
            "endpoint_tv": res["endpoint_ensemble"]["tv"]}
    return keep


def _ensemble(models, data) -> Dict[str, float]:
    from tractable.subspace import classification_metrics, combine_logits

    _, _, xt, yt = data
    logits = [_predict(m, _batches(xt, yt, 500))[0] for m in models]
    return classification_metrics(combine_logits(logits, "logits"), yt)


def _key(method, noise, epochs, seed) -> str:
    return f"{method}|n{noise:g}|e{epochs}|s{seed}"


def run(out: Path, *, seeds: int = 3, budgets: Sequence[int] = (8, 15, 30, 60), noises: Sequence[float] = (0.0, 0.3),
        methods: Sequence[str] = STUDY_METHODS, width: int = 64, lr: float = 0.1, report_only: bool = False,
        echo=None) -> Dict[str, Any]:
    """Train and evaluate every (noise, budget, seed, method) not yet in ``OUT/runs.json``, then write the
    tables and plots (``report_only``: only the tables and plots, from the runs already there)."""
    echo = echo or (lambda msg: print(msg, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "runs.json"
    cache: Dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    fixed = {"width": width, "lr": lr}  # what every cached run shares (the other settings are in its key)
    setting_path = out / "setting.json"
    if setting_path.is_file() and json.loads(setting_path.read_text()) != fixed:
        raise ValueError(f"--out {out}: its runs were made with {setting_path.read_text().strip()}, not {fixed}; "
                         "choose another --out")
    setting_path.write_text(json.dumps(fixed) + "\n")
    setting = {"seeds": seeds, "budgets": list(budgets), "noises": list(noises), "methods": list(methods),
               "width": width, "lr": lr, "torch": torch.__version__, "threads": torch.get_num_threads()}
    t_start = time.time()
    for noise in () if report_only else noises:
        data = _data(noise)
        for epochs in budgets:
            for s in range(seeds):
                std_models = {}
                for m in methods:
                    key = _key(m, noise, epochs, s)
                    need_model = m in ("standard", "standard_b") and "standard_b" in methods
                    ens_key = _key("ensemble2", noise, epochs, s)
                    if key in cache and not (need_model and ens_key not in cache):
                        continue
                    t0 = time.time()
                    model, sub = train_one(m, epochs, s, data, width=width, lr=lr)
                    t_train = time.time() - t0
                    res = evaluate_one(model, sub, data)
                    res["train_s"], res["eval_s"] = t_train, time.time() - t0 - t_train
                    cache[key] = res
                    if need_model:
                        std_models[m] = model
                    main = res.get("midpoint", res.get("model"))
                    echo(f"{key}: acc {100 * main['acc']:.2f} % (train {t_train:.0f} s, eval {res['eval_s']:.0f} s)")
                    cache_path.write_text(json.dumps(cache) + "\n")
                if len(std_models) == 2:
                    cache[_key("ensemble2", noise, epochs, s)] = {"model": _ensemble(list(std_models.values()), data)}
                    cache_path.write_text(json.dumps(cache) + "\n")
    results = {"setting": setting, "runs": cache}
    if not report_only:
        results["wall_s"] = time.time() - t_start
    summary = summarize(cache, seeds=seeds, budgets=budgets, noises=noises)
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    md = tables(summary, seeds=seeds, budgets=budgets, noises=noises)
    (out / "results.md").write_text(md + "\n")
    echo(md)
    try:
        for noise in noises:
            plot_budgets(summary, noise, budgets, out / f"budgets_noise{round(100 * noise)}.png")
            longest = max((e for e in budgets if _key("line", noise, e, 0) in cache), default=None)
            if longest is not None:  # the longest budget with a line run
                plot_line(cache, noise, longest, seeds, out / f"line_noise{round(100 * noise)}_{longest}ep.png")
    except ImportError as e:  # matplotlib is an optional extra
        echo(f"(no plots: {e})")
    return results


# -- the tables ------------------------------------------------------------------------------------------------
ROWS = (  # label, method, how to read the metrics of a run
    ("standard training", "standard", ("model",)),
    ("SWA", "swa", ("model",)),
    ("ensemble of two standard networks (2× compute)", "ensemble2", ("model",)),
    ("line midpoint (BN recomputed)", "line", ("midpoint",)),
    ("line midpoint (training-time BN)", "line", ("midpoint_mixture_bn",)),
    ("line endpoint α = 0", "line", ("endpoints", 0)),
    ("line: ensemble of its endpoints", "line", ("endpoint_ensemble",)),
    ("layerwise line midpoint (BN recomputed)", "layerwise", ("midpoint",)),
    ("layerwise line: ensemble of its endpoints", "layerwise", ("endpoint_ensemble",)),
)


def _get(cache, method, noise, epochs, seed, path) -> Optional[Dict[str, float]]:
    r = cache.get(_key(method, noise, epochs, seed))
    for p in path:
        if r is None:
            return None
        r = r[p]
    return r


def mean_ci(values: List[float]) -> Tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (NaN for one value)."""
    r = t_interval(values, table=True)
    return r["mean"], r["half"] if r["n"] > 1 else float("nan")


def summarize(cache, *, seeds, budgets, noises) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for noise in noises:
        nk = f"noise{noise:g}"
        out[nk] = {}
        best_std = {}
        for s in range(seeds):
            runs = [(_get(cache, "standard", noise, e, s, ("model",)), e) for e in budgets]
            runs = [(r, e) for r, e in runs if r]
            if runs:
                best_std[s] = max(runs, key=lambda t: t[0]["acc"])
        for e in budgets:
            rows = {}
            for label, method, path in ROWS:
                vals = {s: _get(cache, method, noise, e, s, path) for s in range(seeds)}
                vals = {s: v for s, v in vals.items() if v}
                if not vals:
                    continue
                row = {}
                for metric in ("acc", "nll", "ece"):
                    row[metric] = mean_ci([v[metric] for v in vals.values()])
                    std = {s: _get(cache, "standard", noise, e, s, ("model",)) for s in vals}
                    d = [vals[s][metric] - std[s][metric] for s in vals if std[s]]
                    row[f"d_{metric}"] = mean_ci(d) if d else None
                    d_best = [vals[s][metric] - best_std[s][0][metric] for s in vals if s in best_std]
                    row[f"dbest_{metric}"] = mean_ci(d_best) if d_best else None
                row["n"] = len(vals)
                rows[label] = row
            out[nk][f"e{e}"] = rows
        # oracle early stopping for every method: its best budget per seed, against standard training's best
        oracle = {}
        for label, method, path in ROWS:
            best = {}
            for s in range(seeds):
                runs = [(_get(cache, method, noise, e, s, path), e) for e in budgets]
                runs = [(r, e) for r, e in runs if r]
                have = [e for e in budgets if _get(cache, "standard", noise, e, s, ("model",))]
                if runs and s in best_std and [e for _, e in runs] == have:  # the budgets standard training had
                    best[s] = max(runs, key=lambda t: t[0]["acc"])
            if not best:
                continue
            row = {"epochs": {s: best[s][1] for s in best}, "n": len(best)}
            for metric in ("acc", "nll", "ece"):
                row[metric] = mean_ci([best[s][0][metric] for s in best])
                d = [best[s][0][metric] - best_std[s][0][metric] for s in best if s in best_std]
                row[f"dbest_{metric}"] = mean_ci(d) if d else None
            oracle[label] = row
        out[nk]["oracle"] = oracle
        out[nk]["best_standard"] = {
            "epochs": {s: best_std[s][1] for s in best_std},
            **{m: mean_ci([best_std[s][0][m] for s in best_std]) for m in ("acc", "nll", "ece")}} if best_std else {}
    return out


def _fmt(mc, scale=100.0, digits=2) -> str:
    if mc is None:
        return "–"
    m, h = mc
    return f"{scale * m:.{digits}f} ± {scale * h:.{digits}f}" if h == h else f"{scale * m:.{digits}f}"


def _fmt_d(mc, scale=100.0, digits=2) -> str:
    if mc is None:
        return "–"
    m, h = mc
    if h != h:
        return f"{scale * m:+.{digits}f}"
    lo, hi = scale * (m - h), scale * (m + h)
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{scale * m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def tables(summary, *, seeds, budgets, noises) -> str:
    parts = []
    for noise in noises:
        nk = f"noise{noise:g}"
        parts.append(f"### {100 * noise:.0f} % label noise\n")
        parts.append("| network | epochs | accuracy (%) | Δ acc vs standard, same budget (pp) | Δ acc vs best "
                     "standard over budgets (pp) | NLL | Δ NLL vs standard | ECE (%) | Δ ECE vs standard (pp) |")
        parts.append("|---|---|---|---|---|---|---|---|---|")
        for e in budgets:
            for label, row in summary[nk].get(f"e{e}", {}).items():
                same = label == "standard training"
                shown = label if row["n"] == seeds else f"{label} (n = {row['n']})"
                parts.append(f"| {shown} | {e} | {_fmt(row['acc'])} | {'–' if same else _fmt_d(row['d_acc'])} | "
                             f"{_fmt_d(row['dbest_acc'])} | {_fmt(row['nll'], 1, 3)} | "
                             f"{'–' if same else _fmt_d(row['d_nll'], 1, 3)} | {_fmt(row['ece'])} | "
                             f"{'–' if same else _fmt_d(row['d_ece'])} |")
        oracle = summary[nk].get("oracle")
        if oracle:
            parts.append(f"\nEvery method at its best budget per seed (oracle early stopping on the test set, over "
                         f"{', '.join(map(str, budgets))} epochs), against standard training at its best budget:\n")
            parts.append("| network | best budget per seed | accuracy (%) | Δ acc (pp) | NLL | Δ NLL | ECE (%) | "
                         "Δ ECE (pp) |")
            parts.append("|---|---|---|---|---|---|---|---|")
            for label, row in oracle.items():
                shown = label if row["n"] == seeds else f"{label} (n = {row['n']})"
                same = label == "standard training"
                parts.append(f"| {shown} | {', '.join(str(row['epochs'][s]) for s in sorted(row['epochs']))} | "
                             f"{_fmt(row['acc'])} | {'–' if same else _fmt_d(row['dbest_acc'])} | "
                             f"{_fmt(row['nll'], 1, 3)} | {'–' if same else _fmt_d(row['dbest_nll'], 1, 3)} | "
                             f"{_fmt(row['ece'])} | {'–' if same else _fmt_d(row['dbest_ece'])} |")
        b = summary[nk].get("best_standard")
        if b:
            parts.append(f"\nbest standard run over budgets (oracle early stopping on the test set): accuracy "
                         f"{_fmt(b['acc'])} %, NLL {_fmt(b['nll'], 1, 3)}, ECE {_fmt(b['ece'])} %; budget chosen "
                         f"per seed: {b['epochs']}\n")
    parts.append(f"mean ± 95 % t-interval half-width over {seeds} seeds; Δ: paired by seed, mean [95 % interval]; "
                 "* where the interval excludes zero.")
    return "\n".join(parts)


def plot_budgets(summary, noise, budgets, path) -> Path:
    from tractable.train.report import new_figure, save_figure

    nk = f"noise{noise:g}"
    fig, ax = new_figure((6.4, 4.2))
    for label, style in (("standard training", "k-o"), ("SWA", "-s"),
                         ("ensemble of two standard networks (2× compute)", "--^"),
                         ("line midpoint (BN recomputed)", "-D"), ("layerwise line midpoint (BN recomputed)", "-v"),
                         ("line endpoint α = 0", ":x")):
        xs, ys, es = [], [], []
        for e in budgets:
            row = summary[nk].get(f"e{e}", {}).get(label)
            if row:
                xs.append(e)
                ys.append(100 * row["acc"][0])
                es.append(0 if row["acc"][1] != row["acc"][1] else 100 * row["acc"][1])
        if xs:
            ax.errorbar(xs, ys, yerr=es, fmt=style, ms=4, capsize=2, label=label)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(list(budgets))
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("training budget (epochs, each its own run)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title(f"MNIST-1D, BN CNN, {100 * noise:.0f} % label noise (mean, 95 % interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def plot_line(cache, noise, epochs, seeds, path) -> Path:
    from tractable.train.report import new_figure, save_figure

    fig, ax = new_figure((6, 4))
    for method, label in (("line", "line"), ("layerwise", "layerwise line")):
        runs = [cache.get(_key(method, noise, epochs, s)) for s in range(seeds)]
        runs = [r for r in runs if r]
        if not runs:
            continue
        xs = [p["alpha"] for p in runs[0]["points"]]
        ys = [sum(100 * r["points"][i]["acc"] for r in runs) / len(runs) for i in range(len(xs))]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{label}: network at α (BN recomputed)")
    std = [cache.get(_key("standard", noise, epochs, s)) for s in range(seeds)]
    std = [r["model"]["acc"] for r in std if r]
    if std:
        ax.axhline(100 * sum(std) / len(std), ls="--", color="gray", label="standard training")
    ax.set_xlabel("α")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title(f"MNIST-1D, {100 * noise:.0f} % label noise, {epochs} epochs, mean of {len(std)} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tractable.experiments.subspace.mnist1d_noise",
                                description=__doc__.split("\n\n")[0],
                                epilog="example: python -m tractable.experiments.subspace.mnist1d_noise --out "
                                       "runs/subspace-mnist1d")
    p.add_argument("--out", required=True, help="output folder: new, or this study's own (its cached runs are "
                   "reused and its tables rewritten)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budgets", type=int, nargs="+", default=[8, 15, 30, 60])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3])
    p.add_argument("--methods", nargs="+", choices=STUDY_METHODS, default=list(STUDY_METHODS))
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--report", action="store_true", help="only write the tables and plots from OUT/runs.json")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "runs.json").is_file())):
        p.error(f"--out: {out} exists and is not this study's folder (no runs.json); choose another --out")
    if a.report and not (out / "runs.json").is_file():
        p.error(f"--report: {out} has no runs.json to report")
    if a.seeds < 1:
        p.error(f"--seeds: expected an int >= 1, got {a.seeds}")
    if any(b < 2 for b in a.budgets):
        p.error(f"--budgets: every budget must be >= 2 epochs, got {a.budgets}")
    if any(not 0 <= n < 1 for n in a.noise):
        p.error(f"--noise: fractions in [0, 1), got {a.noise}")
    run(out, seeds=a.seeds, budgets=tuple(a.budgets), noises=tuple(a.noise), methods=tuple(a.methods),
        width=a.width, lr=a.lr, report_only=a.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

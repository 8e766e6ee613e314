"""``tractable fa-benchmark``: the public feedback-alignment benchmark (Sanfiz & Akrout 2021) reproduced.

Benchmarking the Accuracy and Robustness of Feedback Alignment Algorithms (Sanfiz & Akrout 2021, BioTorch)
reports, for LeNet on Fashion-MNIST (32×32 inputs; SGD momentum 0.9, lr 0.01, weight decay 1e-3, batch 64,
100 epochs), top-1 test error: BP 9.20, FA 13.06, uSF 9.69, brSF 10.02, frSF 9.61, DFA 12.81 (KP: not
reported). This module trains every rule (``bp`` = the runner's ``normal``, ``fa``, ``usf``, ``brsf``, ``frsf``,
``dfa``, ``kp``) with :func:`tractable.feedback.convert`'s defaults through the runner, on the same recipe,
paired seeds, with the learning rate divided by 10 at 50 % and 75 % of the schedule, and writes our table next
to the published one, with paired differences to BP and their 95 % t-intervals over seeds.

The same table on MNIST-1D (Greydanus 2020; 4,000 / 1,000 generated signals, the ``cnn1d`` model) costs
seconds per run.

Every run writes ``runs/<dataset>-<rule>-s<seed>/result.json`` the moment it ends; a finished run is never
redone and an interrupted one resumes from its checkpoint, so repeating the command finishes the benchmark.
The feedback rules log their alignment with BP (angle between the rule's weight gradient and BP's, angle(W, B),
‖B‖/‖W‖ per layer, :mod:`.alignment`) every ``align_every`` steps; the summary draws them per rule.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tractable.stats import paired_t_interval

__all__ = ["BenchmarkConfig", "RULES", "DATASETS", "PUBLISHED", "run_benchmark", "quick_config", "summarize"]

#: rule label → runner method name
RULES: Dict[str, str] = {"bp": "normal", "fa": "fa", "usf": "usf", "brsf": "brsf", "frsf": "frsf", "dfa": "dfa",
                         "kp": "kp"}
#: dataset → (model, model kwargs)
DATASETS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "fashion_mnist": ("lenet", {}),
    "mnist1d": ("cnn1d", {}),
}
#: Sanfiz & Akrout 2021, LeNet, Fashion-MNIST, top-1 test error (%), 100 epochs
PUBLISHED: Dict[str, Dict[str, float]] = {
    "fashion_mnist": {"bp": 9.20, "fa": 13.06, "usf": 9.69, "brsf": 10.02, "frsf": 9.61, "dfa": 12.81},
}


@dataclass
class BenchmarkConfig:
    """What to run. ``epochs``/``subset`` per dataset (None: the full recipe, 100 epochs on every image)."""

    out: str
    datasets: List[str] = field(default_factory=lambda: ["fashion_mnist", "mnist1d"])
    rules: List[str] = field(default_factory=lambda: list(RULES))
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: Dict[str, int] = field(default_factory=lambda: {"fashion_mnist": 100, "mnist1d": 100})
    subset: Dict[str, Optional[int]] = field(default_factory=dict)
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-3
    batch_size: int = 64
    align_every: int = 50
    data_root: Optional[str] = None
    device: str = "auto"

    def validate(self) -> None:
        def bad(key, msg):
            raise ValueError(f"fa-benchmark: {key}: {msg}")

        for d in self.datasets:
            if d not in DATASETS:
                bad("datasets", f"unknown dataset {d!r}; accepted: {', '.join(DATASETS)}")
        for r in self.rules:
            if r not in RULES:
                bad("rules", f"unknown rule {r!r}; accepted: {', '.join(RULES)}")
        if not self.datasets or not self.rules or not self.seeds:
            bad("datasets/rules/seeds", "need at least one of each")
        if len(set(self.seeds)) != len(self.seeds) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                          for s in self.seeds):
            bad("seeds", f"must be distinct non-negative ints, got {self.seeds}")
        for d in self.datasets:
            e = self.epochs.get(d)
            if isinstance(e, bool) or not isinstance(e, int) or e < 1:
                bad("epochs", f"{d}: must be an int >= 1, got {e!r}")
            s = self.subset.get(d)
            if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
                bad("subset", f"{d}: must be an int >= 1 or None, got {s!r}")
        for key in ("batch_size", "align_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, f"must be an int >= 1, got {v!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            bad("lr/momentum/weight_decay", f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {self.lr}, "
                                            f"{self.momentum}, {self.weight_decay}")

    def result_keys(self) -> Dict[str, Any]:
        """Settings that change a run's result (a reused ``--out`` must agree on them)."""
        d = dataclasses.asdict(self)
        for k in ("out", "datasets", "rules", "seeds", "data_root", "device"):
            d.pop(k)
        return d


def quick_config(out: str, **overrides: Any) -> BenchmarkConfig:
    """The CPU budget: LeNet / Fashion-MNIST on the first 10,000 training images for 6 epochs (lr ÷10 at epochs
    3 and 4.5), MNIST-1D (all 4,000 signals) for 20 epochs; 7 rules × 3 seeds each."""
    kw: Dict[str, Any] = dict(out=out, epochs={"fashion_mnist": 6, "mnist1d": 20},
                              subset={"fashion_mnist": 10000}, align_every=25, device="cpu")
    kw.update(overrides)
    return BenchmarkConfig(**kw)


def _run_id(dataset: str, rule: str, seed: int) -> str:
    return f"{dataset}-{rule}-s{seed}"


def _run_config(cfg: BenchmarkConfig, dataset: str, rule: str, seed: int, runs_dir: Path, resume: bool):
    model, model_kw = DATASETS[dataset]
    epochs = cfg.epochs[dataset]
    method: Dict[str, Any] = {"name": RULES[rule]}
    if rule != "bp":
        method["align_every"] = cfg.align_every
    return {
        "data": {"name": dataset, "root": cfg.data_root, "batch_size": cfg.batch_size,
                 "subset": cfg.subset.get(dataset)},
        "model": {"name": model, "kwargs": dict(model_kw)},
        "method": method,
        "optim": {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
        "schedule": {"name": "step", "milestones": [0.5 * epochs, 0.75 * epochs], "gamma": 0.1},
        "train": {"epochs": epochs, "seed": seed, "device": cfg.device, "progress": False, "plots": False,
                  "tensorboard": False, "keep_checkpoints": 1, "log_every": cfg.align_every},
        "out_dir": str(runs_dir), "name": _run_id(dataset, rule, seed), "resume": resume,
    }


def run_one(cfg: BenchmarkConfig, dataset: str, rule: str, seed: int, runs_dir: Path, data,
            echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train one run through the runner (resuming it if interrupted) and write its ``result.json``."""
    from tractable.train import config_from_dict, train
    from tractable.train.metrics_log import read_metrics

    rid = _run_id(dataset, rule, seed)
    out = runs_dir / rid
    path = out / "result.json"
    if path.is_file():
        with open(path) as f:
            return json.load(f)
    resume = out.is_dir() and any(out.iterdir())
    t0 = time.time()
    run_cfg = config_from_dict(_run_config(cfg, dataset, rule, seed, runs_dir, resume))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no checkpoint; starting from scratch.*")
        res = train(run_cfg, train_data=data[0], test_data=data[1])
    records = read_metrics(res.run_dir)
    align = [{k: v for k, v in r.items() if k == "step" or k.startswith("align/")}
             for r in records if r.get("kind") == "step" and any(k.startswith("align/") for k in r)]
    acc = res.summary.get("final_test_acc")
    result = {"dataset": dataset, "rule": rule, "seed": seed, "test_acc": acc,
              "test_error": None if acc is None else 100.0 * (1.0 - acc),
              "final_train_loss": res.summary.get("final_train_loss"), "method": res.summary.get("method"),
              "epochs": run_cfg.train.epochs, "subset": cfg.subset.get(dataset), "alignment": align,
              "run_dir": str(res.run_dir), "resumed": resume, "time_s": time.time() - t0}
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    tmp.replace(path)
    echo(f"  {rid}: test error {result['test_error']:.2f} % ({result['time_s']:.0f} s)")
    return result


def _check_out(cfg: BenchmarkConfig, out: Path) -> None:
    path = out / "benchmark.json"
    keys = cfg.result_keys()
    if path.is_file():
        with open(path) as f:
            old = json.load(f).get("result_keys", {})
        diff = sorted(k for k in set(old) | set(keys)
                      if json.dumps(old.get(k), sort_keys=True) != json.dumps(keys.get(k), sort_keys=True))
        if diff:
            raise ValueError(f"fa-benchmark: {out} holds a benchmark with different settings ({', '.join(diff)}); "
                             "finished runs would not match. Choose another --out, or repeat the original settings")
    else:
        with open(path, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "result_keys": keys}, f, indent=1)


def run_benchmark(cfg: BenchmarkConfig, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or finish) the benchmark in ``cfg.out`` and write its summary; returns the summary dict."""
    from tractable.data import load_dataset

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_out(cfg, out)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    data = {d: (load_dataset(d, "train", root=cfg.data_root), load_dataset(d, "test", root=cfg.data_root))
            for d in cfg.datasets}
    plan = [(d, r, s) for d in cfg.datasets for s in cfg.seeds for r in cfg.rules]  # seed-major: whole seeds
    todo = [p for p in plan if not (runs_dir / _run_id(*p) / "result.json").is_file()]
    echo(f"fa-benchmark: {len(plan)} runs in {out} ({len(plan) - len(todo)} already finished)")
    results = []
    for d, r, s in plan:
        if (d, r, s) in todo:
            echo(f"[{todo.index((d, r, s)) + 1}/{len(todo)}] {_run_id(d, r, s)}")
        results.append(run_one(cfg, d, r, s, runs_dir, data[d], echo=echo))
    summary = summarize(cfg, results, out)
    echo(f"fa-benchmark: summary in {out / 'summary.md'}")
    return summary


# ------------------------------------------------------------------------------------------------ summary
def _mean_sd(v: Sequence[float]) -> Tuple[float, float]:
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return m, sd


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float, float]:
    """Mean of a − b over paired seeds and its 95 % t-interval (NaN bounds for fewer than 2 pairs)."""
    r = paired_t_interval(a, b, table=True)
    return (r["mean"], r["lo"], r["hi"]) if r["n"] > 1 else (r["mean"], float("nan"), float("nan"))


def summarize(cfg: BenchmarkConfig, results: List[Dict[str, Any]], out: Path) -> Dict[str, Any]:
    """Per dataset: test error per rule (mean ± sd over seeds), the paired difference to BP with its 95 %
    t-interval, the published error; ``summary.md``, ``summary.json`` and ``alignment_<dataset>.png``."""
    by = {(r["dataset"], r["rule"], r["seed"]): r for r in results}
    tables = {}
    for d in cfg.datasets:
        rows = []
        bp = {s: by[(d, "bp", s)]["test_error"] for s in cfg.seeds if (d, "bp", s) in by}
        for rule in cfg.rules:
            errs = {s: by[(d, rule, s)]["test_error"] for s in cfg.seeds if (d, rule, s) in by}
            if not errs:
                continue
            m, sd = _mean_sd(list(errs.values()))
            paired = [s for s in errs if s in bp]
            diff = (paired_interval([errs[s] for s in paired], [bp[s] for s in paired])
                    if rule != "bp" and paired else None)
            rows.append({"rule": rule, "seeds": sorted(errs), "errors": [errs[s] for s in sorted(errs)],
                         "mean": m, "sd": sd, "diff_vs_bp": diff,
                         "published": PUBLISHED.get(d, {}).get(rule)})
        tables[d] = rows
    summary = {"config": dataclasses.asdict(cfg), "tables": tables, "runs": len(results)}
    md = _markdown(cfg, summary)
    (out / "summary.md").write_text(md)
    summary["plots"] = _plots(cfg, results, out)
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    summary["markdown"] = md
    return summary


def _markdown(cfg: BenchmarkConfig, s: Dict[str, Any]) -> str:
    lines = ["# Feedback-alignment benchmark (Sanfiz & Akrout 2021 recipe)", "",
             f"SGD lr {cfg.lr:g}, momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}, batch "
             f"{cfg.batch_size}, lr ÷10 at 50 % and 75 % of the schedule; seeds {', '.join(map(str, cfg.seeds))} "
             "(paired: the same seed gives every rule the same initial weights and batch order). Top-1 test error "
             "in %, mean ± sd over seeds; Δ vs BP = mean paired difference with its 95 % t-interval (an effect is "
             "called only where the interval excludes 0).", ""]
    for d, rows in s["tables"].items():
        sub = cfg.subset.get(d)
        model = DATASETS[d][0]
        lines += [f"## {d} ({model}, {cfg.epochs[d]} epochs, "
                  f"{'all training images' if sub is None else f'first {sub} training images'})", "",
                  "| rule | test error (%) | Δ vs BP (pp) [95 % CI] | published error, 100 epochs (%) |",
                  "|---|---|---|---|"]
        for r in rows:
            err = f"{r['mean']:.2f} ± {r['sd']:.2f}" if r["sd"] == r["sd"] else f"{r['mean']:.2f}"
            if r["diff_vs_bp"] is None:
                diff = "–"
            else:
                m, lo, hi = r["diff_vs_bp"]
                diff = f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo == lo else f"{m:+.2f}"
            pub = "–" if r["published"] is None else f"{r['published']:.2f}"
            lines.append(f"| {r['rule']} | {err} | {diff} | {pub} |")
        lines.append("")
    return "\n".join(lines)


def _informative_layers(records) -> List[str]:
    """Layers whose alignment says something: not the first weight layer (its B is never used: the input needs
    no gradient) and not layers trained by exact BP (gradient angle 0 at every record: the output layer)."""
    layers: List[str] = []
    for rec in records:
        for k in rec:
            if k.startswith("align/") and k.split("/")[1] not in layers:
                layers.append(k.split("/")[1])
    exact = {name for name in layers
             if all(abs(rec.get(f"align/{name}/grad_angle", 0.0)) < 1e-3 for rec in records)}
    return [n for n in layers[1:] if n not in exact]


def _series(results, dataset: str, rule: str, what: str):
    """Mean over the informative layers (:func:`_informative_layers`) and seeds of ``align/<layer>/<what>``
    against the step."""
    acc: Dict[int, List[float]] = {}
    for r in results:
        if r["dataset"] != dataset or r["rule"] != rule:
            continue
        records = r.get("alignment", [])
        keep = _informative_layers(records)
        for rec in records:
            vals = [v for k, v in rec.items() if k.endswith("/" + what) and k.split("/")[1] in keep and v == v]
            if vals:
                acc.setdefault(int(rec["step"]), []).append(sum(vals) / len(vals))
    steps = sorted(acc)
    return steps, [sum(acc[t]) / len(acc[t]) for t in steps]


def _plots(cfg: BenchmarkConfig, results: List[Dict[str, Any]], out: Path) -> List[str]:
    try:
        from tractable.train.report import new_figure, save_figure

        new_figure((1, 1))
    except ImportError:
        warnings.warn("fa-benchmark: matplotlib is not installed, no plots (pip install 'tractable[plot]')")
        return []
    files = []
    for d in cfg.datasets:
        fig, axes = new_figure((13, 3.6), 1, 3, squeeze=False)
        for ax, what, ylabel in zip(axes[0], ("grad_angle", "wb_angle", "norm_ratio"),
                                    ("angle(update, BP gradient) (deg)", "angle(W, B) (deg)", "‖B‖ / ‖W‖")):
            for rule in cfg.rules:
                if rule == "bp":
                    continue
                xs, ys = _series(results, d, rule, what)
                if xs:
                    ax.plot(xs, ys, label=rule, lw=1.2)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel, fontsize=8)
            if what == "grad_angle":
                ax.axhline(90, color="gray", lw=0.6, ls="--")
            ax.set_title(f"{d}: {what} (mean over hidden layers and seeds)", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        files.append(str(save_figure(fig, out / f"alignment_{d}.png", dpi=110)))
    return files

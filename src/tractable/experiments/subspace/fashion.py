"""The subspace paper's comparison at CPU scale: Fashion-MNIST, a small BN CNN, several seeds, with and without
20 % label noise — line midpoint vs standard training vs SWA vs an ensemble of two standard runs.

Every network trains through the runner (``tractable.train.train``); all get the same budget (epochs, lr,
schedule). Evaluation: accuracy, NLL and ECE (20 bins) on the full test set; the line on the α grid with
BatchNorm statistics recomputed for every point (``bn_batches`` training batches each); SWA with swa_utils'
BatchNorm update; the ensemble of two = logit average of standard runs with different seeds (pairs (s, s+1 mod n),
so the pairs share members). Results: ``OUT/results.json``, ``OUT/results.md`` and ``OUT/line*.png``.

    python -m tractable.experiments.subspace.fashion --out runs/subspace-fashion --seeds 3 --epochs 8 \\
        --subset 10000
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

METHODS = ("standard", "swa", "line")


def base_config(out: Path, name: str, *, seed: int, epochs: int, subset: Optional[int], noise: float, lr: float,
                method: Dict[str, Any], device: str = "cpu", widths=(16, 32, 64)) -> Dict[str, Any]:
    return {
        "data": {"name": "fashion_mnist", "batch_size": 128, "eval_batch_size": 1000, "subset": subset,
                 "label_noise": noise, "label_noise_seed": 0},
        "model": {"name": "small_cnn", "kwargs": {"widths": list(widths)}},
        "method": method,
        "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": epochs, "seed": seed, "device": device, "progress": False, "plots": False,
                  "tensorboard": False, "log_every": 100, "eval_every": epochs, "save_every": epochs},
        "out_dir": str(out), "name": name,
    }


def _train(cfg: Dict[str, Any], echo) -> Path:
    from tractable.train import config_from_dict, train

    run_dir = Path(cfg["out_dir"]) / cfg["name"]
    if (run_dir / "summary.json").is_file():
        return run_dir
    if run_dir.exists():  # an interrupted run: continue it
        cfg = {**cfg, "resume": True}
    t0 = time.time()
    res = train(config_from_dict(cfg))
    echo(f"  trained {cfg['name']}: test acc {100 * res.summary['final_test_acc']:.2f} % ({time.time() - t0:.0f} s)")
    return run_dir


def _mean_se(values: List[float]):
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s / math.sqrt(n) if n > 1 else 0.0


def run(out: Path, seeds: int = 3, epochs: int = 8, subset: Optional[int] = 10000, noises=(0.0, 0.2),
        lr: float = 0.05, swa_lr: float = 0.025, bn_batches: int = 10, step: float = 0.1, echo=print,
        methods_used=METHODS) -> Dict[str, Any]:
    from tractable.experiments.subspace.evaluate import load_run
    from tractable.subspace import evaluate_grid, evaluate_models

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {"setting": {"seeds": seeds, "epochs": epochs, "subset": subset, "lr": lr,
                                           "swa_lr": swa_lr, "bn_batches": bn_batches, "step": step,
                                           "model": "small_cnn widths (16, 32, 64)", "optim": "SGD 0.9, wd 5e-4",
                                           "batch": 128}}
    cache = out / "results.json"
    if cache.is_file():
        results.update(json.loads(cache.read_text()))
    methods = {"standard": {"name": "normal"}, "swa": {"name": "swa", "swa_start": 0.75, "swa_lr": swa_lr},
               "line": {"name": "subspace", "kind": "line", "beta": 1.0, "bn_batches": bn_batches}}
    methods = {m: methods[m] for m in methods_used}
    for noise in noises:
        key = f"noise{noise:g}"
        res = results.setdefault(key, {})
        for s in range(seeds):
            for m, method in methods.items():
                name = f"{m}-n{noise:g}-s{s}"
                run_dir = _train(base_config(out, name, seed=s, epochs=epochs, subset=subset, noise=noise, lr=lr,
                                             method=method), echo)
                tag = f"{m}-s{s}"
                if tag in res:
                    continue
                t0 = time.time()
                loaded = load_run(run_dir)
                if m == "line":
                    res[tag] = evaluate_grid(loaded.sub, loaded.train_loader, loaded.test_loader, step=step,
                                             bn_batches=bn_batches)
                else:
                    res[tag] = evaluate_models([loaded.model], loaded.test_loader)["members"][0]
                echo(f"  evaluated {name} ({time.time() - t0:.0f} s)")
                cache.write_text(json.dumps(results, indent=1) + "\n")
        for s in range(seeds):
            tag = f"ensemble-s{s}"
            if tag in res or seeds < 2 or "standard" not in methods:
                continue
            pair = [f"standard-n{noise:g}-s{s}", f"standard-n{noise:g}-s{(s + 1) % seeds}"]
            loaded = [load_run(out / p) for p in pair]
            res[tag] = evaluate_models([r.model for r in loaded], loaded[0].test_loader)["ensemble"]
            cache.write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(table(results, noises, seeds) + "\n")
    echo(table(results, noises, seeds))
    try:
        for noise in noises:
            plot_line_seeds(results, noise, seeds, out / f"line-noise{noise:g}.png")
    except ImportError as e:
        echo(f"(no plot: {e})")
    return results


def _rows(res: Dict[str, Any], seeds: int):
    rows = {
        "standard training": [res.get(f"standard-s{s}") for s in range(seeds)],
        "SWA (swa_utils + update_bn)": [res.get(f"swa-s{s}") for s in range(seeds)],
        "ensemble of two standard runs": [res.get(f"ensemble-s{s}") for s in range(seeds)],
        "line midpoint, BN recomputed": [res.get(f"line-s{s}", {}).get("midpoint") for s in range(seeds)],
        "line midpoint, training-time BN": [res.get(f"line-s{s}", {}).get("midpoint_mixture_bn") for s in range(seeds)],
        "line endpoint (α = 0)": [res.get(f"line-s{s}", {}).get("endpoints", [None])[0] for s in range(seeds)],
    }
    ens = []
    for s in range(seeds):
        e = res.get(f"line-s{s}", {}).get("endpoint_ensemble")
        ens.append({"acc": e["ens_acc"], "nll": e["ens_nll"], "ece": e["ens_ece"]} if e else None)
    rows["line: ensemble of its endpoints"] = ens
    return rows


def table(results: Dict[str, Any], noises, seeds: int) -> str:
    lines = ["| network | label noise | accuracy (%) | ECE (%) | NLL |", "|---|---|---|---|---|"]
    for noise in noises:
        res = results.get(f"noise{noise:g}", {})
        for label, vals in _rows(res, seeds).items():
            vals = [v for v in vals if v]
            if not vals:
                continue
            acc = _mean_se([100 * v["acc"] for v in vals])
            ece = _mean_se([100 * v["ece"] for v in vals])
            nll = _mean_se([v["nll"] for v in vals])
            lines.append(f"| {label} | {100 * noise:.0f} % | {acc[0]:.2f} ± {acc[1]:.2f} | {ece[0]:.2f} ± {ece[1]:.2f} "
                         f"| {nll[0]:.3f} ± {nll[1]:.3f} |")
    lines.append(f"\nmean ± standard error over {seeds} seeds")
    return "\n".join(lines)


def plot_line_seeds(results: Dict[str, Any], noise: float, seeds: int, path: Path) -> Path:
    from tractable.train.report import new_figure, save_figure

    res = results[f"noise{noise:g}"]
    lines = [res[f"line-s{s}"] for s in range(seeds) if f"line-s{s}" in res]
    if not lines:
        return path
    fig, ax = new_figure((6, 4))
    xs = [p["alpha"] for p in lines[0]["points"]]
    for key, label, marker in (("points", "line: network at α", "o"), ("pairs", "ensemble of α and 1−α", "s")):
        if key == "points":
            ys = [[100 * r["points"][i]["acc"] for r in lines] for i in range(len(xs))]
            x = xs
        else:
            x = [p["alpha0"] for p in lines[0]["pairs"]]
            ys = [[100 * r["pairs"][i]["ens_acc"] for r in lines] for i in range(len(x))]
        m = [_mean_se(v) for v in ys]
        ax.errorbar(x, [a for a, _ in m], yerr=[b for _, b in m], marker=marker, ms=3, capsize=2, label=label)
    for label, tag, style in (("standard training", "standard", "--"), ("ensemble of two standard", "ensemble", ":"),
                              ("SWA", "swa", "-.")):
        vals = [res[f"{tag}-s{s}"]["acc"] for s in range(seeds) if f"{tag}-s{s}" in res]
        if vals:
            ax.axhline(100 * sum(vals) / len(vals), ls=style, color="gray", label=label)
    ax.set_xlabel("α")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, small BN CNN, {100 * noise:.0f} % label noise, {len(lines)} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/subspace-fashion")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--subset", type=int, default=10000, help="training samples (0: all 60,000)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--swa-lr", type=float, default=0.025)
    p.add_argument("--bn-batches", type=int, default=10)
    p.add_argument("--step", type=float, default=0.1)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    a = p.parse_args(argv)
    run(Path(a.out), a.seeds, a.epochs, a.subset or None, tuple(a.noise), a.lr, a.swa_lr, a.bn_batches, a.step,
        methods_used=tuple(a.methods))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The TrAct "fewer epochs" study on real images: a patch-4 ViT and a small ResNet, SGD and Adam, paired seeds.

Claim under test (Petersen, Borgelt, Ermon, NeurIPS 2024, arXiv 2410.23970): with TrAct on the first layer a
network reaches the baseline's final accuracy in 1.25-4× fewer epochs, most for ViTs. Protocol (defaults; every
number is a flag, ``--full`` switches to the full data and 30 epochs):

* **Data.** Fashion-MNIST, standardised (mean 0, std 1: the paper's convention, on which its λ guidance rests),
  no augmentation; the first ``subset`` training images and the first ``test_subset`` test images.
* **Models** (TrAct on the first layer, :func:`tractable.models.first_layer`):
  ``vit`` = ``vit_small_open`` with 4×4 patches (the TrAct layer is the Conv2d patch embedding and sees
  n = 16 inputs per token, 49 tokens), width 48, depth 2, 4 heads, MLP ratio 2, Linear head;
  ``resnet`` = ``resnet_small`` with one GELU BasicBlock per stage, channels (8, 16, 32), 3×3 stem (n = 9).
* **Optimisers** — the paper's two CIFAR settings: ``sgd`` = SGD, momentum 0.9, base lr 0.05; ``adam`` = Adam,
  base lr 1e-3; both with a per-step cosine to 0, no warm-up, no weight decay (the official ``train_cifar.py``
  recipe); batch 128. TrAct reuses the baseline's learning rate, as every run of the paper does.
* **Learning rate.** Phase 0: plain at the base lr × ``lr_factors`` (1/3, 1, 3) on seed ``sweep_seed`` (0); the
  lr with the best final test accuracy is used by every arm of the setting (the paper tunes the lr for the
  baseline and reuses it for TrAct; an untuned baseline would credit TrAct with a learning-rate fix).
* **Arms.** Phase 1 (λ sweep): seed ``sweep_seed``, TrAct at every λ in ``lambdas``; the best λ
  is the one with the highest final test accuracy (ties → the one nearest 0.1). Phase 2 (comparison): seeds
  1 … ``seeds`` — fresh seeds, so the chosen λ is not scored on the seed that chose it — plain, TrAct λ = 0.1
  and TrAct at the best λ. Seed s means the same initial weights, batch order and test images in every arm.
* **Metrics** (:mod:`tractable.experiments.tract.stats`): test accuracy after every epoch (mean and 95 % t
  interval over seeds); the paired difference TrAct − plain at every epoch with its 95 % t interval; the paper's
  speed-up, E / (epochs for the mean TrAct curve to reach the mean final plain accuracy), with a 95 % percentile
  bootstrap interval over paired seeds. The paper compares separate runs with shorter budgets; here the
  epochs are points of one cosine run, whose last epochs gain most, so this reading is conservative.
  Diagnostics of the TrAct layer (:func:`tractable.tract.layer_diagnostics`) on the first training batch at
  initialisation and with the final weights of the first comparison seed.
* **What would confirm / refute.** Confirmed for a setting if the speed-up interval lies above 1.25 (the
  paper's smallest claimed factor); refuted if the final-epoch difference interval lies below 0 or the speed-up
  interval below 1; otherwise unresolved at this scale.

Every network trains through the runner (:func:`tractable.train.train`) into
``OUT/runs/<setting>/<arm>-lr<lr>-s<seed>``; a finished run is reused and an interrupted one resumed, so the
command can be re-run after an interruption (``--report`` summarises the seeds finished so far).
``OUT/study.json`` records the protocol; a later call with a different protocol on the same ``OUT`` is refused.
Results: ``OUT/results.json``, ``OUT/results.md``, ``OUT/curves.png`` and ``OUT/differences.png``.

    tractable tract-study --out runs/tract-study                 # ~20-25 CPU-minutes at 1 thread
    tractable tract-study --out runs/tract-study-full --full --device cuda
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tractable.experiments.tract import stats

MODELS: Dict[str, Dict[str, Any]] = {
    "vit": {"name": "vit_small_open", "kwargs": {"patch_size": 4, "hidden": 48, "depth": 2, "heads": 4,
                                                  "mlp_ratio": 2.0, "head_hidden": 0}},
    "resnet": {"name": "resnet_small", "kwargs": {"blocks": [1, 1, 1], "channels": [8, 16, 32], "head_hidden": 0}},
}
OPTIMS: Dict[str, Dict[str, Any]] = {
    "sgd": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "adam": {"name": "adam", "lr": 1e-3},
}
DATASETS = ("fashion_mnist",)
DEFAULTS = {"models": ["vit", "resnet"], "optims": ["sgd", "adam"], "lambdas": [0.05, 0.1, 0.3, 1.0],
            "lr_factors": [1 / 3, 1.0, 3.0], "seeds": 5,
            "sweep_seed": 0, "epochs": 5, "subset": 3000, "test_subset": 2000, "batch_size": 128,
            "dataset": "fashion_mnist"}
FULL = {"epochs": 30, "subset": None, "test_subset": None}
PAPER_LAMBDA = 0.1


def arm_name(lam: Optional[float]) -> str:
    return "plain" if lam is None else f"tract{lam:g}"


def check_protocol(p: Dict[str, Any]) -> Dict[str, Any]:
    """Validate a protocol dict (the study's options); ValueError names the flag and the accepted values."""
    for key, allowed in (("models", MODELS), ("optims", OPTIMS)):
        bad = [v for v in p[key] if v not in allowed]
        if bad or not p[key]:
            raise ValueError(f"--{key}: {bad or 'nothing given'} not accepted; choose from {sorted(allowed)}")
    if p["dataset"] not in DATASETS:
        raise ValueError(f"--dataset: {p['dataset']!r} not accepted; choose from {list(DATASETS)}")
    if not p["lambdas"] or any(not (isinstance(v, (int, float)) and v > 0 and v < float("inf")) for v in p["lambdas"]):
        raise ValueError(f"--lambdas: every λ must be a finite number > 0 (paper: 0.05 … 0.2), got {p['lambdas']}")
    if not p["lr_factors"] or any(not (isinstance(v, (int, float)) and 0 < v < float("inf")) for v in p["lr_factors"]):
        raise ValueError(f"--lr-factors: every factor must be a finite number > 0, got {p['lr_factors']}")
    if p["seeds"] < 2:
        raise ValueError(f"--seeds: paired intervals need at least 2 seeds (5 recommended), got {p['seeds']}")
    if p["epochs"] < 2:
        raise ValueError(f"--epochs: the speed-up needs at least 2 evaluated epochs, got {p['epochs']}")
    for key in ("subset", "test_subset"):
        if p[key] is not None and p[key] < p["batch_size"]:
            raise ValueError(f"--{key.replace('_', '-')}: must be at least the batch size {p['batch_size']} "
                             f"(or 0 for the whole split), got {p[key]}")
    if p["sweep_seed"] in range(1, p["seeds"] + 1):
        raise ValueError(f"--sweep-seed: must not be one of the comparison seeds 1 … {p['seeds']}, got "
                         f"{p['sweep_seed']}")
    return p


def run_config(p: Dict[str, Any], out: Path, model: str, optim: str, lam: Optional[float], seed: int,
               device: str, lr: float) -> Dict[str, Any]:
    """The runner config of one arm of one setting."""
    epochs = p["epochs"]
    return {
        "data": {"name": p["dataset"], "batch_size": p["batch_size"], "eval_batch_size": 1000,
                 "subset": p["subset"], "test_subset": p["test_subset"]},
        "model": MODELS[model],
        # the study computes its own diagnostics (``diagnose``); the step log is off
        "method": {"name": "normal"} if lam is None else {"name": "tract", "l": float(lam), "diag_every": 0},
        "optim": {**OPTIMS[optim], "lr": lr},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "seed": seed, "device": device, "progress": False, "plots": False,
                  "tensorboard": False, "log_every": 10 ** 9, "eval_every": 1, "save_every": epochs},
        "out_dir": str(out / "runs" / f"{model}-{optim}"),
        "name": f"{arm_name(lam)}-lr{lr:.3g}-s{seed}",
    }


def _train(cfg: Dict[str, Any], data, echo) -> Optional[Dict[str, Any]]:
    """Train one arm (reuse a finished run, resume an interrupted one); its accuracy curve and CPU time.
    With ``data=None`` (report only) an unfinished run gives ``None``."""
    from tractable.train import config_from_dict, read_summary, train

    run_dir = Path(cfg["out_dir"]) / cfg["name"]
    summary = read_summary(run_dir)
    if not summary and data is None:
        return None
    if not summary:
        cfg = {**cfg, "resume": run_dir.exists()}
        t0, c0 = time.perf_counter(), time.process_time()
        summary = train(config_from_dict(cfg), train_data=data[0], test_data=data[1]).summary
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        (run_dir / "study_time.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}) + "\n")
        echo(f"  {run_dir.parent.name}/{run_dir.name}: final test acc {100 * summary['final_test_acc']:.2f} % "
             f"({wall:.0f} s wall, {cpu:.0f} s CPU)")
    t = run_dir / "study_time.json"
    times = json.loads(t.read_text()) if t.is_file() else {"wall_s": float("nan"), "cpu_s": float("nan")}
    return {"acc": [100 * a for a in summary["test_acc"]], **times}


def best_lambda(sweep: Dict[str, Dict[str, Any]], lambdas: Sequence[float]) -> float:
    """The λ with the highest final accuracy on the sweep seed; ties → the one nearest to 0.1."""
    return max(lambdas, key=lambda l: (sweep[arm_name(l)]["acc"][-1], -abs(l - PAPER_LAMBDA)))


def _prepare_out(out: Path, p: Dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    f = out / "study.json"
    if f.is_file():
        old = json.loads(f.read_text())
        if old != p:
            diff = sorted(k for k in set(old) | set(p) if old.get(k) != p.get(k))
            raise ValueError(f"--out: {out} holds a study with a different protocol (differs in: {', '.join(diff)});"
                             f" choose another --out or repeat the same options")
    else:
        f.write_text(json.dumps(p, indent=1) + "\n")


def run(out: Path, protocol: Dict[str, Any], *, device: str = "cpu", echo: Callable[[str], None] = print,
        plot: bool = True, report_only: bool = False) -> Dict[str, Any]:
    """Run (or complete) the study in ``out`` and write its report; returns the results dict. ``report_only``
    trains nothing and reports the seeds whose runs have all finished (e.g. while the study is still running)."""
    from tractable.data import load_dataset

    p = check_protocol(dict(protocol))
    out = Path(out)
    if report_only:
        if not (out / "study.json").is_file():
            raise ValueError(f"--report: {out} holds no study (no study.json)")
        data = None
    else:
        data = (load_dataset(p["dataset"], "train"), load_dataset(p["dataset"], "test"))  # fails early if missing
    _prepare_out(out, p)
    t_start = time.perf_counter()
    settings = [(m, o) for m in p["models"] for o in p["optims"]]
    res: Dict[str, Any] = {"protocol": p, "settings": {}}
    echo(f"tract-study: {len(settings)} settings × (plain at {len(p['lr_factors'])} lrs, then {len(p['lambdas'])} λ "
         f"on seed {p['sweep_seed']}; plain / λ=0.1 / best λ on seeds 1…{p['seeds']}); out {out}")
    for m, o in settings:  # phase 0: the baseline's learning rate
        base = OPTIMS[o]["lr"]
        grid = [float(f"{base * f:.3g}") for f in p["lr_factors"]]  # 3 significant digits, as in the run names
        lrs = {f"{lr:.3g}": _train(run_config(p, out, m, o, None, p["sweep_seed"], device, lr), data, echo)
               for lr in grid}
        if None in lrs.values():  # report only: this setting's lr sweep is not finished
            continue
        lr = float(max(lrs, key=lambda k: (lrs[k]["acc"][-1], -abs(math.log(float(k) / base)))))
        res["settings"][f"{m}-{o}"] = {"lr_sweep": lrs, "lr": lr, "paired": {}}
    settings = [(m, o) for m, o in settings if f"{m}-{o}" in res["settings"]]
    for m, o in settings:  # phase 1: the λ sweep of every setting, at the chosen lr
        s = res["settings"][f"{m}-{o}"]
        s["sweep"] = {arm_name(lam): _train(run_config(p, out, m, o, lam, p["sweep_seed"], device, s["lr"]), data,
                                            echo) for lam in [None, *p["lambdas"]]}
        if None in s["sweep"].values():
            del res["settings"][f"{m}-{o}"]
            continue
        s["best_lambda"] = best_lambda(s["sweep"], p["lambdas"])
    settings = [(m, o) for m, o in settings if f"{m}-{o}" in res["settings"]]
    for seed in range(1, p["seeds"] + 1):  # phase 2: seed-major, so every setting has the same seeds so far
        for m, o in settings:
            s = res["settings"][f"{m}-{o}"]
            lams = list(dict.fromkeys([None, PAPER_LAMBDA, s["best_lambda"]]))
            runs = [_train(run_config(p, out, m, o, lam, seed, device, s["lr"]), data, echo) for lam in lams]
            if None in runs:  # report only: this seed is not finished for every arm
                continue
            for lam, r in zip(lams, runs):
                s["paired"].setdefault(arm_name(lam), []).append(r)
    res["settings"] = {k: s for k, s in res["settings"].items() if s["paired"]}
    if not res["settings"]:
        raise ValueError(f"--report: no setting of {out} has a finished comparison seed yet")
    res["wall_s_this_call"] = time.perf_counter() - t_start
    res = summarise(res)
    diagnose(res, out, data[0] if data is not None else load_dataset(p["dataset"], "train"))
    (out / "results.json").write_text(json.dumps(_finite(res), indent=1) + "\n")
    md = report_markdown(res)
    (out / "results.md").write_text(md + "\n")
    echo(md)
    if plot:
        try:
            plot_curves(res, out / "curves.png")
            plot_differences(res, out / "differences.png")
        except ImportError as e:
            echo(f"(no plots: {e})")
    return res


def diagnose(res: Dict[str, Any], out: Path, train_data, batch: int = 128) -> None:
    """TrAct-layer diagnostics (:func:`tractable.tract.layer_diagnostics`) on the first ``batch`` standardised
    training images, for every TrAct arm of every setting on the first comparison seed: at initialisation and with
    the final weights (cross-entropy loss, training mode). Stored as ``res["settings"][key]["diagnostics"]``."""
    import torch
    import torch.nn.functional as F

    import tractable
    from tractable.models import create_model, first_layer
    from tractable.train import latest_checkpoint, load_weights
    from tractable.train.rng import seed_everything

    info = train_data.info
    x = train_data.x[:batch].float() / 255
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    x, y = (x - mean) / std, train_data.y[:batch]
    for key, s in res["settings"].items():
        m, o = key.split("-")
        s["diagnostics"] = {}
        for arm, runs in s["paired"].items():
            if arm == "plain":
                continue
            lam = float(arm[len("tract"):])
            row = {}
            for when in ("init", "end"):
                seed_everything(1)
                model = create_model(MODELS[m]["name"], num_classes=info.num_classes, in_channels=info.shape[0],
                                     image_size=info.shape[-1], **MODELS[m]["kwargs"])
                path, layer = first_layer(model)
                tractable.TrAct(layer, l=lam)
                if when == "end":
                    run_dir = out / "runs" / key / f"{arm}-lr{s['lr']:.3g}-s1"
                    load_weights(latest_checkpoint(run_dir / "checkpoints"), model)
                got = {}

                def keep(mod, args, output):
                    got["x"] = args[0].detach()
                    output.register_hook(lambda g: got.setdefault("g", g))

                h = layer.register_forward_hook(keep)
                model.train()
                F.cross_entropy(model(x), y).backward()
                h.remove()
                row[when] = tractable.tract.layer_diagnostics(layer, got["x"], got["g"])
            row["n"] = tractable.tract.layer_geometry(layer).n_per_group
            s["diagnostics"][arm] = row


def _finite(v):
    """``v`` with non-finite floats as strings ("inf", "nan"), so that results.json is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def summarise(res: Dict[str, Any]) -> Dict[str, Any]:
    """Add per-setting statistics (curves with intervals, paired differences, speed-ups) to ``res``."""
    total_cpu = total_wall = 0.0
    for key, s in res["settings"].items():
        runs = ([r for k, r in s["lr_sweep"].items() if float(k) != s["lr"]] + list(s["sweep"].values())
                + [r for arm in s["paired"].values() for r in arm])
        total_cpu += sum(r["cpu_s"] for r in runs)
        total_wall += sum(r["wall_s"] for r in runs)
        plain = [r["acc"] for r in s["paired"]["plain"]]
        s["n_seeds"] = len(plain)
        s["curves"] = {arm: [stats.t_interval([r["acc"][e] for r in rs]) for e in range(len(rs[0]["acc"]))]
                       for arm, rs in s["paired"].items()}
        s["differences"], s["speedup"], s["per_seed_speedup"] = {}, {}, {}
        for arm, rs in s["paired"].items():
            if arm == "plain":
                continue
            tract = [r["acc"] for r in rs]
            s["differences"][arm] = stats.paired_differences(tract, plain)
            s["speedup"][arm] = stats.speedup_bootstrap(tract, plain)
            s["per_seed_speedup"][arm] = [stats.speedup([t], [q]) for t, q in zip(tract, plain)]
    res["cpu_s"], res["wall_s"] = total_cpu, total_wall
    return res


def _ci(d: Dict[str, float], digits: int = 2) -> str:
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def _speed(d: Dict[str, float]) -> str:
    lo, hi = ("<1" if d[k] == 0 else f"{d[k]:.2f}" for k in ("lo", "hi"))
    point = "not reached" if d["speedup"] == 0 else f"{d['speedup']:.2f}×"
    return f"{point} [{lo}, {hi}] (reached in {100 * d['reached']:.0f} % of resamples)"


def report_markdown(res: Dict[str, Any]) -> str:
    p = res["protocol"]
    E = p["epochs"]
    n = sorted({s["n_seeds"] for s in res["settings"].values()})
    n = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    lines = [f"TrAct study: {p['dataset']}, {p['subset'] or 'all'} training / {p['test_subset'] or 'all'} test "
             f"images, {E} epochs, batch {p['batch_size']}; λ sweep on seed {p['sweep_seed']}, comparison on "
             f"{n} paired seeds (from 1…{p['seeds']}). Intervals: 95 % t over seeds; speed-up: 95 % percentile "
             "bootstrap over seeds.",
             "", "### λ sweep (final test accuracy, %, one seed)", "",
             "| setting | plain | " + " | ".join(f"λ={l:g}" for l in p["lambdas"]) + " | best λ |",
             "|---|---|" + "---|" * len(p["lambdas"]) + "---|"]
    for key, s in res["settings"].items():
        row = [f"{s['sweep'][arm_name(l)]['acc'][-1]:.2f}" for l in [None, *p["lambdas"]]]
        lines.append(f"| {key} | " + " | ".join(row) + f" | {s['best_lambda']:g} |")
    lines += ["", "### Baseline learning rate (plain, final test accuracy, %, sweep seed)", "",
              "| setting | " + " | ".join(f"lr {k}" for k in next(iter(res["settings"].values()))["lr_sweep"]) +
              " | chosen |", "|---|" + "---|" * (len(p["lr_factors"]) + 1)]
    for key, s in res["settings"].items():
        lines.append(f"| {key} | " + " | ".join(f"{r['acc'][-1]:.2f}" for r in s["lr_sweep"].values()) +
                     f" | {s['lr']:.3g} |")
    lines += ["", f"### Final test accuracy (%) and paired difference after epoch {E}", "",
              "| setting | arm | accuracy | TrAct − plain (pp) | speed-up (E / epochs to plain's final) |",
              "|---|---|---|---|---|"]
    for key, s in res["settings"].items():
        for arm, c in s["curves"].items():
            diff = _ci(s["differences"][arm][-1]) if arm in s["differences"] else "—"
            sp = _speed(s["speedup"][arm]) if arm in s["speedup"] else "—"
            lines.append(f"| {key} | {arm} | {_ci(c[-1])} | {diff} | {sp} |")
    lines += ["", "### Paired difference TrAct − plain per epoch (pp; * = interval excludes 0)", "",
              "| setting | arm | " + " | ".join(f"ep {e + 1}" for e in range(E)) + " |",
              "|---|---|" + "---|" * E]
    for key, s in res["settings"].items():
        for arm, ds in s["differences"].items():
            cells = [f"{d['mean']:+.2f} ± {d['hi'] - d['mean']:.2f}{'*' if d['lo'] > 0 or d['hi'] < 0 else ''}"
                     for d in ds]
            lines.append(f"| {key} | {arm} | " + " | ".join(cells) + " |")
    lines += ["", "### TrAct-layer diagnostics (first 128 training images, seed 1; cosine/gain: TrAct vs plain "
              "weight gradient)", "",
              "| setting | arm | n | cond(XᵀX/b) | eff. rank | cond(XᵀX/b + λI) | cosine init → end "
              "| gain init → end |",
              "|---|---|---|---|---|---|---|---|"]
    for key, s in res["settings"].items():
        for arm, d in s.get("diagnostics", {}).items():
            i, e = d["init"], d["end"]
            lines.append(f"| {key} | {arm} | {d['n']} | {i['cond']:.0f} | {i['eff_rank']:.2f} | {i['cond_k']:.1f} | "
                         f"{i['cosine']:.3f} → {e['cosine']:.3f} | {i['gain']:.2f} → {e['gain']:.2f} |")
    n_sweep = sum(len(s["sweep"]) + len(s["lr_sweep"]) - 1 for s in res["settings"].values())
    lines += ["", f"Compute: {n_sweep} lr/λ sweep runs + "
              f"{sum(len(a) for s in res['settings'].values() for a in s['paired'].values())} comparison runs, "
              f"{res['cpu_s'] / 60:.1f} CPU-minutes, {res['wall_s'] / 60:.1f} wall-minutes of training."]
    return "\n".join(lines)


_COLORS = {"plain": "tab:gray"}


def _grid(res: Dict[str, Any]):
    from tractable.train.report import new_figure

    keys = list(res["settings"])
    ncols = min(2, len(keys))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = new_figure((5.2 * ncols, 3.6 * nrows), nrows, ncols, squeeze=False)
    return fig, keys, [ax for row in axes for ax in row]


def plot_curves(res: Dict[str, Any], path: Path) -> Path:
    """Mean test accuracy per epoch with 95 % t bands, one panel per setting."""
    from tractable.train.report import save_figure

    fig, keys, axes = _grid(res)
    for ax, key in zip(axes, keys):
        n = res["settings"][key]["n_seeds"]
        for arm, c in res["settings"][key]["curves"].items():
            xs = list(range(1, len(c) + 1))
            line, = ax.plot(xs, [d["mean"] for d in c], marker="o", ms=3, label=arm, color=_COLORS.get(arm))
            ax.fill_between(xs, [d["lo"] for d in c], [d["hi"] for d in c], alpha=0.2, color=line.get_color())
        ax.set_title(f"{key}: test accuracy, {n} seeds", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return save_figure(fig, path, dpi=110)


def plot_differences(res: Dict[str, Any], path: Path) -> Path:
    """Paired difference TrAct − plain per epoch with 95 % t intervals, one panel per setting."""
    from tractable.train.report import save_figure

    fig, keys, axes = _grid(res)
    for ax, key in zip(axes, keys):
        diffs = res["settings"][key]["differences"]
        for i, (arm, ds) in enumerate(diffs.items()):
            xs = [e + 1 + 0.12 * (i - (len(diffs) - 1) / 2) for e in range(len(ds))]
            ax.errorbar(xs, [d["mean"] for d in ds], yerr=[[d["mean"] - d["lo"] for d in ds],
                                                           [d["hi"] - d["mean"] for d in ds]],
                        marker="o", ms=3, capsize=2, label=arm)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{key}: TrAct − plain (paired, 95 % t)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy difference (pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return save_figure(fig, path, dpi=110)


def add_arguments(p) -> None:
    """The study's flags (``tractable tract-study``)."""
    p.add_argument("--out", default="runs/tract-study", help="study directory (default runs/tract-study)")
    p.add_argument("--models", nargs="+", default=DEFAULTS["models"], metavar="MODEL",
                   help=f"models from {sorted(MODELS)} (default: both)")
    p.add_argument("--optims", nargs="+", default=DEFAULTS["optims"], metavar="OPTIM",
                   help=f"optimiser settings from {sorted(OPTIMS)} (default: both)")
    p.add_argument("--lambdas", nargs="+", type=float, default=DEFAULTS["lambdas"], metavar="L",
                   help="λ values of the sweep (default 0.05 0.1 0.3 1.0)")
    p.add_argument("--lr-factors", nargs="+", type=float, default=DEFAULTS["lr_factors"], metavar="F",
                   help="baseline lr grid as factors of the base lr (SGD 0.05, Adam 1e-3; default 1/3 1 3)")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"], help="comparison seeds 1…N (default 5)")
    p.add_argument("--sweep-seed", type=int, default=DEFAULTS["sweep_seed"], help="seed of the λ sweep (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 5; 30 with --full)")
    p.add_argument("--subset", type=int, default=None,
                   help="training images (default 3000; 0 = all 60,000, the --full default)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="test images (default 2000; 0 = all 10,000, the --full default)")
    p.add_argument("--full", action="store_true", help="full data and 30 epochs (hours on a CPU; use a GPU)")
    p.add_argument("--dataset", default=DEFAULTS["dataset"], help="dataset (fashion_mnist)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--report", action="store_true",
                   help="train nothing: report the seeds finished so far (same options as the study)")


def protocol_from_args(a) -> Dict[str, Any]:
    """The protocol dict from parsed flags (``--full`` changes the defaults of epochs and subsets)."""
    base = {**DEFAULTS, **(FULL if a.full else {})}
    pick = lambda v, k: base[k] if v is None else (None if v == 0 and k != "epochs" else v)  # noqa: E731
    return {"models": list(a.models), "optims": list(a.optims), "lambdas": [float(v) for v in a.lambdas],
            "lr_factors": [float(v) for v in a.lr_factors],
            "seeds": a.seeds, "sweep_seed": a.sweep_seed, "epochs": pick(a.epochs, "epochs"),
            "subset": pick(a.subset, "subset"), "test_subset": pick(a.test_subset, "test_subset"),
            "batch_size": DEFAULTS["batch_size"], "dataset": a.dataset}


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tractable.experiments.tract.study",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    run(Path(a.out), protocol_from_args(a), device=a.device, plot=not a.no_plot, report_only=a.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

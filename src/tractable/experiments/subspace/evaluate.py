"""``tractable subspace-eval`` / ``ensemble-eval``: evaluate finished runs the way the subspace paper does.

:func:`load_run` rebuilds a run's model from its ``config.yaml`` (a subspace run: the registry model converted
exactly as the rule did, then the checkpoint loaded with ``strict=True``) and its data.
:func:`evaluate_run` writes ``RUN/subspace_eval.json`` and paper-style plots in ``RUN/plots/``:

* line / curve: accuracy (and NLL, ECE) on the α grid, every point with its own recomputed BatchNorm
  statistics; the ensemble of the networks at α and 1 − α (logit average) plotted at α; the midpoint with the
  training-time (mixture) statistics as one marker; horizontal references for standard training
  (``--standard RUN``) and the ensemble of two independently trained models (``--ensemble RUN_A RUN_B``);
* simplex: centroid, vertices, vertex ensemble; for k = 3 a heat-map of accuracy over the simplex;
* any other run (standard, SWA): accuracy, NLL and ECE of its final weights.

:func:`ensemble_eval` evaluates the logit-averaged ensemble of independently trained runs and writes it as a run
directory of its own (``metrics.jsonl`` with one epoch record, ``summary.json``, ``config.yaml``), so that
``tractable compare`` shows it next to the runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import yaml

from tractable.train.report import new_figure, save_figure

__all__ = ["load_run", "evaluate_run", "ensemble_eval", "plot_line", "plot_simplex"]


class LoadedRun:
    """What :func:`load_run` returns: ``cfg``, ``model``, ``sub`` (None unless a subspace run), ``train_loader``
    (no augmentation, for BatchNorm statistics) and ``test_loader``."""

    def __init__(self, run_dir, cfg, model, sub, train_loader, test_loader):
        self.run_dir, self.cfg, self.model, self.sub = Path(run_dir), cfg, model, sub
        self.train_loader, self.test_loader = train_loader, test_loader


def run_config(run_dir):
    """The config of a classification run (one-line errors for a directory that is not one)."""
    from tractable.train.config import load_run_config

    cfg = load_run_config(run_dir)
    if cfg.task != "classification":
        raise ValueError(f"{run_dir}: a run of task {cfg.task!r}; subspace-eval and ensemble-eval evaluate "
                         "classification runs")
    return cfg


def check_same_data(runs: Sequence, what: str) -> None:
    """Runs evaluated or combined together must share the test set, the input shape and the classes: one-line
    ``ValueError`` naming the first run that differs and how."""
    def key(cfg):
        d = cfg.data
        return {"dataset": d.name, "data.kwargs": dict(d.kwargs), "data.test_subset": d.test_subset,
                "data.mean": d.mean, "data.std": d.std}

    first, ref = runs[0]
    for path, cfg in runs[1:]:
        diff = [f"{k} {ref_v!r} vs {key(cfg)[k]!r}" for k, ref_v in key(ref).items() if key(cfg)[k] != ref_v]
        if diff:
            raise ValueError(f"{what}: {path} was not trained on the same data as {first} ({'; '.join(diff)}); "
                             "only runs on the same dataset, input shape and classes are combined")


def _check_loaded(runs: Sequence["LoadedRun"], what: str) -> None:
    first = runs[0]
    for r in runs[1:]:
        a = (tuple(first.info.shape), first.info.num_classes)
        b = (tuple(r.info.shape), r.info.num_classes)
        if a != b:
            raise ValueError(f"{what}: {r.run_dir} takes inputs {b[0]} with {b[1]} classes, {first.run_dir} takes "
                             f"{a[0]} with {a[1]} classes; only runs on the same data are combined")


def load_run(run_dir, *, device: str = "cpu", data_root: Optional[str] = None) -> LoadedRun:
    """Rebuild the model of a finished (or checkpointed) run, its weights loaded strictly, and its loaders."""
    from tractable.models import create_model, model_defaults
    from tractable.train import latest_checkpoint, load_weights
    from tractable.train.loaders import build_dataset, build_loader, model_shape_kwargs
    from tractable.train.loop import resolve_device

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if data_root:
        cfg.data.root = data_root
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint under checkpoints/")
    dev = resolve_device(device, "--device")
    train_data = build_dataset(cfg.data, "train")
    test_data = build_dataset(cfg.data, "test")
    mc = cfg.model
    accepted = model_defaults(mc.name)

    def model_fn():
        kw = model_shape_kwargs(train_data.info, accepted)
        kw.update(dict(mc.kwargs))
        return create_model(mc.name, **kw)

    torch.manual_seed(cfg.train.seed)
    model = model_fn()
    sub = None
    if "subspace" in cfg.method.rules:  # subspace or tract+subspace (TrAct keeps the parameter names)
        from tractable.subspace import convert

        o = cfg.method.rules["subspace"]
        sub = convert(model, model_fn, kind=o.kind, k=o.k, layerwise=o.layerwise, norm_endpoints=o.norm_endpoints,
                      control_init=o.control_init, allow_identical=True)  # the checkpoint's weights follow
    load_weights(ckpt, model, strict=True, device="cpu")
    model.to(dev).eval()
    bs = cfg.data.eval_batch_size
    train_loader = build_loader(train_data, bs, train=False, cfg=cfg.data, seed=cfg.train.seed, device=dev)
    test_loader = build_loader(test_data, bs, train=False, cfg=cfg.data, seed=cfg.train.seed, device=dev)
    loaded = LoadedRun(run_dir, cfg, model, sub, train_loader, test_loader)
    loaded.info = train_data.info
    return loaded


def _plain_metrics(run: LoadedRun) -> Dict[str, Any]:
    from tractable.subspace import evaluate_models

    return evaluate_models([run.model], run.test_loader)["members"][0]


def evaluate_run(run_dir, *, step: float = 0.05, bn_batches: Optional[int] = None, device: str = "cpu",
                 standard: Sequence[str] = (), ensemble: Sequence[str] = (), heatmap_step: Optional[float] = 0.1,
                 ensemble_size: int = 0, plot: bool = True, data_root: Optional[str] = None,
                 echo=print) -> Dict[str, Any]:
    """Evaluate one run (see the module docstring); returns the dict written to ``RUN/subspace_eval.json``."""
    from tractable.subspace import evaluate_grid, evaluate_models, evaluate_simplex

    if not 0 < step <= 1:  # every check before any work
        raise ValueError(f"subspace-eval --step: the α grid step must be in (0, 1], got {step}")
    if bn_batches is not None and bn_batches < 1:
        raise ValueError(f"subspace-eval --bn-batches: must be >= 1, got {bn_batches}")
    if ensemble_size < 0:
        raise ValueError(f"subspace-eval --ensemble-size: must be >= 0, got {ensemble_size}")
    if heatmap_step is not None and not 0 < heatmap_step <= 1:
        raise ValueError(f"subspace-eval --heatmap-step: must be in (0, 1], got {heatmap_step}")
    others = [*standard, *ensemble]
    check_same_data([(r, run_config(r)) for r in [run_dir, *others]], "subspace-eval")
    run = load_run(run_dir, device=device, data_root=data_root)
    out: Dict[str, Any] = {"run": str(run.run_dir), "method": run.cfg.method.name}
    sub = run.sub
    if sub is None:
        out["model"] = _plain_metrics(run)
    elif sub.kind in ("line", "curve"):
        out.update(evaluate_grid(sub, run.train_loader, run.test_loader, step=step, bn_batches=bn_batches))
    else:
        out.update(evaluate_simplex(sub, run.train_loader, run.test_loader, bn_batches=bn_batches,
                                    generator=torch.Generator().manual_seed(run.cfg.train.seed),
                                    ensemble_size=ensemble_size,
                                    heatmap_step=heatmap_step if sub.K == 3 else None))
    refs: Dict[str, float] = {}
    if standard:
        std_runs = [load_run(r, device=device, data_root=data_root) for r in standard]
        _check_loaded([run, *std_runs], "subspace-eval")
        members = [_plain_metrics(r) for r in std_runs]
        accs = [m["acc"] for m in members]
        refs["standard training"] = sum(accs) / len(accs)
        out["standard"] = {"runs": [str(r) for r in standard], "acc": accs,
                           "mean": {k: sum(m[k] for m in members) / len(members) for k in ("acc", "nll", "ece")}}
    if ensemble:
        members = [load_run(r, device=device, data_root=data_root) for r in ensemble]
        _check_loaded([run, *members], "subspace-eval")
        ens = evaluate_models([m.model for m in members], run.test_loader)
        out["standard_ensemble"] = {"runs": [str(r) for r in ensemble], **ens}
        if len(members) > 1:
            refs[f"ensemble of {len(members)} standard"] = ens["ensemble"]["acc"]
    path = run.run_dir / "subspace_eval.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    echo(f"wrote {path}")
    echo(summary_table(out))
    if plot:
        try:
            if sub is not None and sub.kind in ("line", "curve"):
                echo(f"plot: {plot_line(out, run.run_dir / 'plots' / 'subspace_line.png', refs)}")
            elif sub is not None and "heatmap" in out:
                echo(f"plot: {plot_simplex(out, run.run_dir / 'plots' / 'subspace_simplex.png')}")
        except ImportError as e:
            echo(f"(no plot: {e})")
    return out


def summary_table(res: Dict[str, Any]) -> str:
    """A short Markdown table of an :func:`evaluate_run` result."""
    rows = []

    def add(label, m):
        if m:
            rows.append(f"| {label} | {100 * m['acc']:.2f} | {m['nll']:.4f} | {100 * m['ece']:.2f} |")

    add("model", res.get("model"))
    if "midpoint" in res:
        add("midpoint (BN recomputed)", res["midpoint"])
        add("midpoint (training-time BN)", res.get("midpoint_mixture_bn"))
        add("endpoint α=0", res["endpoints"][0])
        add("endpoint α=1", res["endpoints"][1])
        e = res.get("endpoint_ensemble")
        if e:
            add("ensemble of the endpoints", {"acc": e["ens_acc"], "nll": e["ens_nll"], "ece": e["ens_ece"]})
    if "centroid" in res:
        add("centroid (BN recomputed)", res["centroid"])
        for v in res["vertices"]:
            add(f"vertex {v['vertex']}", v)
        add("ensemble of the vertices", res["vertex_ensemble"])
    st = res.get("standard")
    if st and "mean" in st:
        n = len(st["runs"])
        add("standard training" + (f" (mean of {n} runs)" if n > 1 else ""), st["mean"])
    se = res.get("standard_ensemble")
    if se and "ensemble" in se:
        add(f"ensemble of {len(se['runs'])} standard runs", se["ensemble"])
    return "\n".join(["| network | acc (%) | NLL | ECE (%) |", "|---|---|---|---|", *rows])


def plot_line(res: Dict[str, Any], path, refs: Optional[Dict[str, float]] = None) -> Path:
    """Accuracy along the line/curve, the α / 1−α ensembles and horizontal references (paper Fig. 4 style)."""
    fig, ax = new_figure((6, 4))
    xs = [p["alpha"] for p in res["points"]]
    ax.plot(xs, [100 * p["acc"] for p in res["points"]], marker="o", ms=3, label=f"{res['kind']}: network at α")
    pairs = res.get("pairs", [])
    ax.plot([p["alpha0"] for p in pairs], [100 * p["ens_acc"] for p in pairs], marker="s", ms=3,
            label="ensemble of α and 1−α")
    if res.get("midpoint_mixture_bn"):
        ax.plot([0.5], [100 * res["midpoint_mixture_bn"]["acc"]], "kx", label="midpoint, training-time BN")
    for (label, acc), style in zip((refs or {}).items(), ("--", ":", "-.")):
        ax.axhline(100 * acc, ls=style, color="gray", label=label)
    ax.set_xlabel("α")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_simplex(res: Dict[str, Any], path) -> Path:
    """Accuracy over a 3-vertex simplex (barycentric grid) as a heat-map."""
    fig, ax = new_figure((5, 4.4))
    pts = res["heatmap"]
    corners = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 3 ** 0.5 / 2]])
    xy = torch.tensor([p["t"] for p in pts]) @ corners
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=[100 * p["acc"] for p in pts], s=120, cmap="viridis", marker="h")
    fig.colorbar(sc, ax=ax, label="test accuracy (%)")
    for i, (x, y) in enumerate(corners.tolist()):
        ax.annotate(f"ω{i}", (x, y), textcoords="offset points", xytext=(0, -12 if y == 0 else 6), ha="center")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"simplex: centroid {100 * res['centroid']['acc']:.2f} %", fontsize=9)
    return save_figure(fig, path, dpi=120)


def ensemble_eval(runs: Sequence[str], out_dir, *, device: str = "cpu", combine: str = "logits",
                  data_root: Optional[str] = None, echo=print) -> Dict[str, Any]:
    """Logit-averaged ensemble of independently trained runs, written as a run directory for ``compare``."""
    from tractable.subspace import evaluate_models

    from tractable.train.outputs import MARKER

    if len(runs) < 2:
        raise ValueError(f"ensemble-eval: give at least two runs, got {len(runs)}")
    if combine not in ("logits", "probs"):
        raise ValueError(f"ensemble-eval --combine: 'logits' or 'probs', got {combine!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"ensemble-eval --out: {out_dir} exists and is not empty; an ensemble is written into "
                              "a new or empty directory (choose another --out)")
    check_same_data([(r, run_config(r)) for r in runs], "ensemble-eval")  # before any model is loaded
    loaded = [load_run(r, device=device, data_root=data_root) for r in runs]
    _check_loaded(loaded, "ensemble-eval")
    res = evaluate_models([m.model for m in loaded], loaded[0].test_loader, combine=combine)
    ens = res["ensemble"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text(json.dumps({"command": "ensemble-eval"}) + "\n")
    epochs = max(m.cfg.train.epochs for m in loaded)
    record = {"kind": "epoch", "epoch": epochs, "step": 0, "test_acc": ens["acc"], "test_loss": ens["nll"],
              "test_ece": ens["ece"], "test_tv": res["tv"], "test_disagreement": res["disagreement"]}
    (out_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    summary = {"name": out_dir.name, "method": f"ensemble of {len(runs)} ({combine})", "members": list(map(str, runs)),
               "epochs": epochs, "final_test": {k: v for k, v in record.items() if k.startswith("test_")},
               "members_test": res["members"]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(loaded[0].run_dir / "config.yaml") as f:
        cfg = yaml.safe_load(f) or {}
    cfg["name"] = out_dir.name
    cfg["ensemble"] = {"members": [str(r) for r in runs], "combine": combine}
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    members = ", ".join(f"{100 * m['acc']:.2f}" for m in res["members"])
    echo(f"ensemble of {len(runs)}: acc {100 * ens['acc']:.2f} %, NLL {ens['nll']:.4f}, ECE {100 * ens['ece']:.2f} %"
         f" (members: {members}) -> {out_dir}")
    return {"dir": str(out_dir), **res}

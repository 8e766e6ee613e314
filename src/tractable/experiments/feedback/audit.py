"""``tractable fa-audit``: the whole audit of the FA evaluation protocol, resumable, on any dataset, CPU or GPU.

One command runs what the protocol paper's ``run_all.sh`` runs, with its defects removed:

* **methods × architectures × seeds** (pre-registered 42, 123, 456 everywhere): BP and the credit-assignment
  methods in seed-compatible and corrected forms, side by side —

  ==============  =====================================  ==========================================
  label           runner rule + options                  what it is
  ==============  =====================================  ==========================================
  ``bp``          ``normal``                             backpropagation
  ``fa_seed``     ``fa``, ``compat=seed``                the reference code's "FA": block feedback without
                                                         the identity path, per-sample RMS (*not* FA)
  ``fa_block``    ``fa``, ``granularity=block``          block FA with the exact identity path
  ``fa_layer``    ``fa``                                 layer FA (Lillicrap et al. 2016)
  ``dfa_seed``    ``dfa``, ``compat=seed``               RMS-normalised DFA, shared B_0, pre-LN points
  ``dfa``         ``dfa``                                DFA, true ∂L/∂logits, no normalisation
  ``dfa_post_ln`` ``dfa``, ``placement=post_ln``         DFA points after a parameter-free LN
  ==============  =====================================  ==========================================

* **baselines** for every (architecture, seed): ``frozen_seed`` (blocks at init, embed and head trained by BP,
  the reference code's baseline), ``frozen_matched`` (blocks at init, the rest trained by *the same method* —
  one per method; BP's is ``frozen_seed``), ``shallow`` (``depth=0``, BP) and ``head_only`` (only the head
  trains);
* **penalty sweep** λ ∈ {0, 1e-4, 1e-2} (a loss term λ·Σ_l mean_n ‖f_l‖²) on one method and architecture
  (default ``dfa_seed`` on ``resmlp``), every seed, each followed by a **fresh-B null**: ≥ 20 redraws of all
  feedback matrices with the training distribution and sharing structure, comparing the training-B "deep
  cosine" (mean of Γ_k over the interior points k = 1 … L−1) with the redraws (z-score, empirical p).

Every run trains through the runner (:func:`tractable.train.train`: one optimizer, one schedule stepped the same
way for all methods, checkpoints that include the feedback buffers), then :class:`~tractable.feedback.FAProtocol`
measures it on the test set. As soon as a run ends, ``runs/<id>/result.json`` is written next to its runner
directory (config, metrics, ``checkpoints/`` with B); a run whose ``result.json`` exists is never redone, and an
interrupted one resumes from its last checkpoint. At the end the reports are judged with all seeds and
baselines (:func:`~tractable.feedback.protocol.judge`) into ``summary.md`` (one table), ``summary.json`` and
plots (per-point cosine, growth per block, accuracy vs baselines). Rerunning the command on the same ``--out``
finishes what is missing and rebuilds the summary.

Methods whose runner rule is not registered are skipped with a note (they must be requested explicitly to
raise an error instead).
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

import torch
import torch.nn as nn
from tractable.train.report import new_figure, save_figure

__all__ = ["AuditConfig", "ARCHS", "METHODS", "KINDS", "RunSpec", "plan", "run_audit", "quick_config",
           "available_methods", "summarize"]

#: architecture label → (registered model, default kwargs, kwargs under --quick, default epochs)
ARCHS: Dict[str, Tuple[str, Dict[str, Any], Dict[str, Any], int]] = {
    "resmlp": ("resmlp", {}, {"dim": 64, "depth": 4}, 100),
    "resmlp_d512_l2": ("resmlp_d512_l2", {}, {"dim": 96, "depth": 2}, 100),
    "vit_mini": ("vit_mini", {}, {"dim": 32, "heads": 2, "depth": 2}, 60),
    "resnet": ("small_resnet_credit", {}, {"width": 8, "depth": 2}, 100),
    "resnet_preact": ("small_resnet_credit", {"preact": True}, {"width": 8, "depth": 2}, 100),
}

#: method label → (runner rule, rule options, "seed"/"corrected"/"bp" mode, family)
METHODS: Dict[str, Tuple[str, Dict[str, Any], str, str]] = {
    "bp": ("normal", {}, "bp", "bp"),
    "fa_seed": ("fa", {"compat": "seed"}, "seed", "fa"),
    "fa_block": ("fa", {"granularity": "block"}, "corrected", "fa"),
    "fa_layer": ("fa", {}, "corrected", "fa"),
    "dfa_seed": ("dfa", {"compat": "seed"}, "seed", "dfa"),
    "dfa": ("dfa", {}, "corrected", "dfa"),
    "dfa_post_ln": ("dfa", {"placement": "post_ln"}, "corrected", "dfa"),
}

KINDS = ("method", "frozen_matched", "frozen_seed", "shallow", "head_only", "penalty")
BASELINE_KINDS = ("frozen_seed", "frozen_matched", "shallow", "head_only")
SEED_DEFAULT = [42, 123, 456]
D1_THRESHOLD = 50.0


@dataclass
class AuditConfig:
    """What to run. ``epochs=None`` uses each architecture's default (the reference recipe: ResMLP and ResNet
    100, ViT 60); ``augment=None`` means crop+flip for CIFAR (the reference recipe, also for the ResMLP) and
    nothing otherwise."""

    out: str
    dataset: str = "cifar10"
    data_root: Optional[str] = None
    download: bool = False  # let the dataset reader download a missing dataset (CIFAR, MNIST, Fashion-MNIST)
    archs: List[str] = field(default_factory=lambda: ["resmlp", "vit_mini", "resnet"])
    methods: List[str] = field(default_factory=lambda: list(METHODS))
    seeds: List[int] = field(default_factory=lambda: list(SEED_DEFAULT))
    epochs: Optional[int] = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    augment: Optional[str] = None
    subset: Optional[int] = None
    test_subset: Optional[int] = None
    baselines: bool = True
    penalty: bool = True
    penalty_arch: str = "resmlp"
    penalty_method: str = "dfa_seed"
    penalty_lambdas: List[float] = field(default_factory=lambda: [0.0, 1e-4, 1e-2])
    penalty_epochs: int = 30
    null_redraws: int = 20
    device: str = "auto"
    diag_samples: int = 1024
    seed_samples: int = 128
    model_kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    quick: bool = False
    strict_methods: bool = False  # True: an unavailable method is an error instead of a note

    def validate(self) -> None:
        def bad(key, msg):
            raise ValueError(f"fa-audit: {key}: {msg}")

        for a in self.archs:
            if a not in ARCHS:
                bad("archs", f"unknown architecture {a!r}; accepted: {', '.join(ARCHS)}")
        for m in self.methods:
            if m not in METHODS:
                bad("methods", f"unknown method {m!r}; accepted: {', '.join(METHODS)}")
        if not self.archs or not self.methods or not self.seeds:
            bad("archs/methods/seeds", "need at least one of each")
        if len(set(self.seeds)) != len(self.seeds) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                          for s in self.seeds):
            bad("seeds", f"must be distinct non-negative ints, got {self.seeds}")
        for key in ("batch_size", "penalty_epochs", "diag_samples", "seed_samples"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(key, f"must be an int >= 1, got {v!r}")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            bad("epochs", f"must be an int >= 1, got {self.epochs!r}")
        if isinstance(self.null_redraws, bool) or not isinstance(self.null_redraws, int) or \
                (self.null_redraws != 0 and self.null_redraws < 2):
            bad("null_redraws", f"must be 0 (off) or an int >= 2 (20 or more recommended), got {self.null_redraws!r}")
        if not (self.lr > 0) or self.weight_decay < 0:
            bad("lr/weight_decay", f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if any(not (lam >= 0) for lam in self.penalty_lambdas):
            bad("penalty_lambdas", f"must be >= 0, got {self.penalty_lambdas}")
        if self.penalty:
            if self.penalty_arch not in ARCHS:
                bad("penalty_arch", f"unknown architecture {self.penalty_arch!r}; accepted: {', '.join(ARCHS)}")
            if self.penalty_method not in METHODS:
                bad("penalty_method", f"unknown method {self.penalty_method!r}; accepted: {', '.join(METHODS)}")
        if self.augment not in (None, "none", "crop_flip", "flip", "crop"):
            bad("augment", f"must be one of none, crop_flip, flip, crop; got {self.augment!r}")
        for a in self.model_kwargs:
            if a not in ARCHS:
                bad("model_kwargs", f"unknown architecture {a!r}; accepted: {', '.join(ARCHS)}")

    def result_keys(self) -> Dict[str, Any]:
        """The settings that change a run's result (a reused ``--out`` must agree on them)."""
        d = dataclasses.asdict(self)
        for k in ("out", "archs", "methods", "seeds", "baselines", "penalty", "penalty_lambdas", "strict_methods",
                  "null_redraws", "device", "data_root", "download"):
            d.pop(k)
        return d


#: left out of ``--quick`` (and why): its rows would not train above chance at that budget
QUICK_LEFT_OUT = {"resnet": "at the quick budget (3 epochs, 66 AdamW steps on 8×8 digits) even BP stays near "
                            "chance (18.7 %), so its rows would say nothing; run it with --archs resnet and more "
                            "epochs"}


def quick_config(out: str, **overrides: Any) -> AuditConfig:
    """The minutes-long CPU audit: scikit-learn's bundled digits (offline), small ResMLP and ViT-mini, 3 epochs,
    all seeds, all available methods and baselines, the penalty sweep with a 20-redraw null (``resnet`` is left
    out, see :data:`QUICK_LEFT_OUT`; ``archs=`` brings it back)."""
    kw: Dict[str, Any] = dict(out=out, dataset="digits", epochs=3, batch_size=64, penalty_epochs=3,
                              archs=[a for a in ("resmlp", "vit_mini", "resnet") if a not in QUICK_LEFT_OUT],
                              diag_samples=256, seed_samples=128, device="cpu", quick=True,
                              model_kwargs={a: dict(q) for a, (_, _, q, _) in ARCHS.items()})
    kw.update(overrides)
    return AuditConfig(**kw)


# ----------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class RunSpec:
    """One training run of the audit."""

    kind: str
    arch: str
    method: str  # the method label; "bp" for BP-trained baselines
    seed: int
    lam: Optional[float] = None

    @property
    def id(self) -> str:
        if self.kind == "method":
            return f"{self.arch}-{self.method}-s{self.seed}"
        if self.kind == "frozen_matched":
            return f"{self.arch}-{self.method}-frozen-s{self.seed}"
        if self.kind == "penalty":
            return f"{self.arch}-{self.method}-lam{self.lam:g}-s{self.seed}"
        return f"{self.arch}-{self.kind}-s{self.seed}"


def available_methods() -> Dict[str, Optional[str]]:
    """method label → None if its runner rule is registered, else the reason it is not."""
    from tractable.train.rules import list_rules

    rules = set(list_rules())
    return {m: None if rule in rules else f"runner rule {rule!r} is not registered"
            for m, (rule, _, _, _) in METHODS.items()}


def plan(cfg: AuditConfig) -> Tuple[List[RunSpec], Dict[str, str]]:
    """The runs, in execution order (seed-major so that a partial audit has whole seeds), and the methods left
    out with the reason."""
    cfg.validate()
    avail = available_methods()
    skipped = {m: avail[m] for m in cfg.methods if avail[m] is not None}
    if skipped and cfg.strict_methods:
        raise ValueError("fa-audit: " + "; ".join(f"method {m!r}: {why}" for m, why in skipped.items()))
    methods = [m for m in cfg.methods if m not in skipped]
    runs: List[RunSpec] = []
    for seed in cfg.seeds:
        for arch in cfg.archs:
            for m in methods:
                runs.append(RunSpec("method", arch, m, seed))
            if cfg.baselines:
                runs.append(RunSpec("frozen_seed", arch, "bp", seed))
                runs.append(RunSpec("shallow", arch, "bp", seed))
                runs.append(RunSpec("head_only", arch, "bp", seed))
                for m in methods:
                    if m != "bp":
                        runs.append(RunSpec("frozen_matched", arch, m, seed))
        if cfg.penalty and cfg.penalty_method not in skipped and avail.get(cfg.penalty_method) is None:
            for lam in cfg.penalty_lambdas:
                runs.append(RunSpec("penalty", cfg.penalty_arch, cfg.penalty_method, seed, float(lam)))
    if cfg.penalty and avail.get(cfg.penalty_method) is not None:
        skipped.setdefault(cfg.penalty_method, avail[cfg.penalty_method])
    return runs, skipped


# ----------------------------------------------------------------------------------------------------- runs
class BranchPenalty:
    """Runner hook adding λ·Σ_l mean_n ‖f_l‖² (f_l = the branch output of block l in this training forward)."""

    def __init__(self, lam: float):
        from tractable.train.hooks import Hook

        self.lam = float(lam)
        self._outs: List[torch.Tensor] = []
        self._handles: list = []
        self.hook = type("BranchPenaltyHook", (Hook,), {
            "on_start": lambda _self, trainer: self._attach(trainer),
            "extra_loss": lambda _self, trainer, batch: self._loss(),
            "on_end": lambda _self, trainer: self._detach(),
        })()

    def _attach(self, trainer) -> None:
        model = getattr(trainer.model, "module", trainer.model)
        for blk in model.blocks:
            self._handles.append(blk.register_forward_hook(self._capture))

    def _capture(self, module, inputs, output) -> None:
        if module.training and torch.is_grad_enabled():
            self._outs.append(output)

    def _loss(self) -> Optional[torch.Tensor]:
        outs, self._outs = self._outs, []
        if not outs:
            return None
        return self.lam * sum(o.reshape(o.shape[0], -1).pow(2).sum(dim=1).mean() for o in outs)

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _model_spec(cfg: AuditConfig, spec: RunSpec) -> Tuple[str, Dict[str, Any]]:
    name, base, _, _ = ARCHS[spec.arch]
    kw = dict(base)
    kw.update(cfg.model_kwargs.get(spec.arch, {}))
    if spec.kind in ("frozen_seed", "frozen_matched"):
        kw["freeze"] = "blocks"
    elif spec.kind == "head_only":
        kw["freeze"] = "embed_blocks"
    elif spec.kind == "shallow":
        kw["depth"] = 0
    return name, kw


def _epochs(cfg: AuditConfig, spec: RunSpec) -> int:
    if spec.kind == "penalty":
        return cfg.penalty_epochs
    return cfg.epochs if cfg.epochs is not None else ARCHS[spec.arch][3]


def _run_config(cfg: AuditConfig, spec: RunSpec, runs_dir: Path, resume: bool) -> Dict[str, Any]:
    rule, options, _, _ = METHODS[spec.method]
    model_name, model_kw = _model_spec(cfg, spec)
    augment = cfg.augment
    if augment is None:
        augment = "crop_flip" if cfg.dataset.lower().startswith("cifar") else None
    elif augment == "none":
        augment = None
    return {
        "data": {"name": cfg.dataset, "root": cfg.data_root, "batch_size": cfg.batch_size, "augment": augment,
                 "subset": cfg.subset, "test_subset": cfg.test_subset},
        "model": {"name": model_name, "kwargs": model_kw},
        "method": {"name": rule, **options},
        "optim": {"name": "adamw", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        "schedule": {"name": "cosine"},
        "train": {"epochs": _epochs(cfg, spec), "seed": spec.seed, "device": cfg.device, "progress": False,
                  "plots": False, "tensorboard": False, "keep_checkpoints": 1, "log_every": 10 ** 9},
        "out_dir": str(runs_dir), "name": spec.id, "resume": resume,
    }


def _feedback_info(model: nn.Module) -> Dict[str, Any]:
    """Names, shapes and a float64 checksum of the model's feedback matrices (empty for BP)."""
    try:
        from tractable.feedback import feedback_checksum, feedback_tensors
    except ImportError:  # pragma: no cover - the feedback package is part of tractable
        return {}
    try:
        tensors = feedback_tensors(model)
    except Exception as e:  # noqa: BLE001 - recorded, never fatal
        return {"error": str(e)}
    if not tensors:
        return {}
    return {"names": sorted(tensors), "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "checksum": float(feedback_checksum(model))}


def deep_cosine(report: Dict[str, Any]) -> float:
    """Mean of the per-point cosine Γ_k over the interior points k = 1 … L−1 (all points if L < 2)."""
    cos = [c["mean"] for c in report["credit"]["cosine"]]
    inner = cos[1:-1] if len(cos) > 2 else cos
    vals = [c for c in inner if c == c]
    return sum(vals) / len(vals) if vals else float("nan")


def _fresh_b_null(cfg: AuditConfig, spec: RunSpec, model: nn.Module, test, train_report: Dict[str, Any]):
    """Redraw every feedback matrix ``cfg.null_redraws`` times (same method and options, so the same distribution
    and sharing structure; feedback seeds 10⁶ + r) and measure the deep cosine of each redraw."""
    from tractable.feedback import convert
    from tractable.feedback.metrics import bp_reference, method_signals, point_cosines
    from tractable.feedback.protocol import _materialise
    from tractable.models import create_model

    rule, options, _, _ = METHODS[spec.method]
    model_name, model_kw = _model_spec(cfg, spec)
    device = next(model.parameters()).device
    x, y = _materialise(test, device)
    x, y = x[:cfg.diag_samples], y[:cfg.diag_samples]
    feedback = set(_feedback_info(model).get("names", []))
    weights = {k: v for k, v in model.state_dict().items() if k not in feedback}
    ref = bp_reference(model, x, y)
    values = []
    for r in range(cfg.null_redraws):
        fresh = create_model(model_name, **_shape_kwargs(test, model_name), **model_kw)
        convert(fresh, rule, seed=1_000_000 + r, **options)
        missing, unexpected = fresh.load_state_dict(weights, strict=False)
        if unexpected or any(k not in feedback and not k.startswith("credit.") for k in missing):
            raise RuntimeError(f"fresh-B null: the redrawn model does not match the trained one "
                               f"(missing {missing}, unexpected {unexpected})")
        fresh.to(device)
        sig = method_signals(fresh, x, y)
        cos = point_cosines(sig, ref.grads)
        values.append(deep_cosine({"credit": {"cosine": cos}}))
    from tractable.feedback.metrics import fresh_b_null

    out = fresh_b_null(deep_cosine(train_report), values)
    out["values"] = values
    return out


def _shape_kwargs(test, model_name: str) -> Dict[str, Any]:
    from tractable.models import model_defaults
    from tractable.train.loaders import model_shape_kwargs

    return model_shape_kwargs(test.info, model_defaults(model_name))


def _load_data(cfg: AuditConfig):
    from tractable.data import load_dataset

    train = load_dataset(cfg.dataset, "train", root=cfg.data_root, download=cfg.download)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, download=cfg.download)
    if cfg.test_subset is not None:
        if cfg.test_subset > len(test):
            raise ValueError(f"fa-audit: test_subset={cfg.test_subset} is larger than the test set ({len(test)})")
        test = test.subset(cfg.test_subset)
    return train, test


def run_one(cfg: AuditConfig, spec: RunSpec, runs_dir: Path, train_data, test_data,
            echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train one run through the runner (resuming it if interrupted), measure it with the protocol, write
    ``runs_dir/<id>/result.json``; a run whose result exists is loaded, not redone."""
    from tractable.feedback.protocol import FAProtocol
    from tractable.train import config_from_dict, train

    out = runs_dir / spec.id
    result_path = out / "result.json"
    if result_path.is_file():
        with open(result_path) as f:
            return json.load(f)
    resume = out.is_dir() and any(out.iterdir())
    t0 = time.time()
    hooks = [BranchPenalty(spec.lam).hook] if spec.kind == "penalty" and spec.lam else []
    run_cfg = config_from_dict(_run_config(cfg, spec, runs_dir, resume))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no checkpoint; starting from scratch.*")
        res = train(run_cfg, hooks=hooks, train_data=train_data, test_data=test_data)
    model = res.model
    proto = FAProtocol(model, test_data, diag_samples=cfg.diag_samples, seed_samples=cfg.seed_samples,
                       seed=spec.seed)
    report = proto.measure()
    rule, options, mode, family = METHODS[spec.method]
    result: Dict[str, Any] = {
        "id": spec.id, "kind": spec.kind, "arch": spec.arch, "method": spec.method, "seed": spec.seed,
        "lam": spec.lam, "rule": rule, "options": options, "mode": mode, "family": family,
        "feedback_options": _options_of(model),
        "model": {"name": run_cfg.model.name, "kwargs": dict(run_cfg.model.kwargs)},
        "dataset": cfg.dataset, "epochs": run_cfg.train.epochs,
        "test_acc": report["measured_test_acc"], "runner_test_acc": res.summary.get("final_test_acc"),
        "runner_summary": res.summary, "protocol": report, "feedback": _feedback_info(model),
        "run_dir": str(res.run_dir), "torch": torch.__version__, "device": str(next(model.parameters()).device),
        "resumed": resume,
    }
    if spec.kind == "penalty" and cfg.null_redraws:
        try:
            result["null"] = _fresh_b_null(cfg, spec, model, test_data, report)
        except Exception as e:  # noqa: BLE001 - the run itself stands; the null's failure is recorded
            result["null"] = {"error": f"{type(e).__name__}: {e}"}
    result["time_s"] = time.time() - t0
    tmp = result_path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    tmp.replace(result_path)
    d1 = report["diagnostics"]["D1_scale_growth"]["max_growth"]
    echo(f"  {spec.id}: test acc {result['test_acc']:.4f}, D1 {d1:.3g}x ({result['time_s']:.1f} s)")
    return result


def _options_of(model: nn.Module) -> Optional[Dict[str, Any]]:
    opts = getattr(model, "feedback_options", None)
    if opts is None:
        return None
    return opts.to_dict() if hasattr(opts, "to_dict") else dict(vars(opts))


# ----------------------------------------------------------------------------------------------------- driver
def run_audit(cfg: AuditConfig, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or finish) the audit in ``cfg.out`` and write its summary; returns the summary dict."""
    from tractable.train.outputs import check_output_dir, claim_output_dir

    check_output_dir(cfg.out, "fa-audit", own=("audit.json",))  # never into another command's results
    runs, skipped = plan(cfg)
    out = claim_output_dir(cfg.out, "fa-audit", own=("audit.json",))
    _check_out(cfg, out)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)
    train_data, test_data = _load_data(cfg)
    for m, why in skipped.items():
        echo(f"fa-audit: method {m!r} skipped: {why}")
    todo = [s for s in runs if not (runs_dir / s.id / "result.json").is_file()]
    echo(f"fa-audit: {len(runs)} runs in {out} ({len(runs) - len(todo)} already finished)")
    results = []
    for i, spec in enumerate(runs):
        if spec in todo:
            echo(f"[{todo.index(spec) + 1}/{len(todo)}] {spec.id}")
        results.append(run_one(cfg, spec, runs_dir, train_data, test_data, echo=echo))
    cfg_all, results = _with_earlier_results(cfg, results, runs_dir)
    summary = summarize(cfg_all, results, skipped, out)
    echo(f"fa-audit: summary in {out / 'summary.md'}")
    return summary


def _with_earlier_results(cfg: AuditConfig, results: List[Dict[str, Any]], runs_dir: Path):
    """A narrower re-run (fewer methods, archs or seeds) in an existing audit directory keeps the finished runs of
    the earlier ones in the summary: the summary never shrinks. All runs there share the result-changing settings
    (:func:`_check_out`)."""
    have = {r["id"] for r in results}
    for path in sorted(runs_dir.glob("*/result.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("id") not in have and {"kind", "arch", "method", "seed"} <= set(r):
            results.append(r)
            have.add(r["id"])

    def union(old, key):
        extra = [v for v in dict.fromkeys(r[key] for r in results) if v is not None and v not in old]
        return [*old, *extra]

    lambdas = union(list(cfg.penalty_lambdas), "lam") if cfg.penalty or any(r["kind"] == "penalty" for r in results) \
        else list(cfg.penalty_lambdas)
    wider = dataclasses.replace(
        cfg, archs=union(list(cfg.archs), "arch"), methods=union(list(cfg.methods), "method"),
        seeds=union(list(cfg.seeds), "seed"), penalty_lambdas=lambdas,
        baselines=cfg.baselines or any(r["kind"] not in ("method", "penalty") for r in results),
        penalty=cfg.penalty or any(r["kind"] == "penalty" for r in results))
    return wider, results


def _check_out(cfg: AuditConfig, out: Path) -> None:
    path = out / "audit.json"
    keys = cfg.result_keys()
    if path.is_file():
        with open(path) as f:
            old = json.load(f).get("result_keys", {})
        diff = sorted(k for k in set(old) | set(keys) if json.dumps(old.get(k), sort_keys=True)
                      != json.dumps(keys.get(k), sort_keys=True))
        if diff:
            raise ValueError(f"fa-audit: {out} holds an audit with different settings ({', '.join(diff)}); finished "
                             "runs would not match. Choose another --out, or repeat the original settings")
    else:
        with open(path, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "result_keys": keys}, f, indent=1)


# ----------------------------------------------------------------------------------------------------- summary
def _mean_std(v: Sequence[float]) -> Tuple[float, float]:
    v = [x for x in v if x == x]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
    return m, s


def _fmt_acc(v: Sequence[float]) -> str:
    m, s = _mean_std(v)
    if m != m:
        return "–"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if s == s else f"{100 * m:.1f}"


def _agg_verdicts(vs: Sequence[str]) -> str:
    """Seeds summarised: ``PASS 3/3`` or ``FAIL(D3) 2/3, INCONCLUSIVE 1/3`` (most frequent first)."""
    counts: Dict[str, int] = {}
    for v in vs:
        counts[v] = counts.get(v, 0) + 1
    order = sorted(counts, key=lambda v: (-counts[v], v))
    return ", ".join(f"{v} {counts[v]}/{len(vs)}" for v in order)


def summarize(cfg: AuditConfig, results: List[Dict[str, Any]], skipped: Dict[str, str], out: Path) -> Dict[str, Any]:
    """Judge every method run with all seeds and baselines; write ``summary.json``, ``summary.md`` and plots."""
    from tractable.feedback.protocol import judge

    by = {(r["kind"], r["arch"], r["method"], r["seed"], r.get("lam")): r for r in results}

    def accs(kind, arch, method, seeds):
        return [by[(kind, arch, method, s, None)]["test_acc"] for s in seeds if (kind, arch, method, s, None) in by]

    rows, judged = [], {}
    for arch in cfg.archs:
        for m in cfg.methods:
            seeds = [s for s in cfg.seeds if ("method", arch, m, s, None) in by]
            if not seeds:
                continue
            acc = accs("method", arch, m, seeds)
            base = {}
            for kind in ("frozen_seed", "shallow", "head_only"):
                b = accs(kind, arch, "bp", seeds)
                if len(b) == len(seeds):
                    base[kind] = b
            matched = accs("frozen_matched", arch, m, seeds) if m != "bp" else base.get("frozen_seed", [])
            if len(matched) == len(seeds):
                base["frozen_matched"] = matched
            reps = []
            for s in seeds:
                r = by[("method", arch, m, s, None)]
                bp = by.get(("method", arch, "bp", s, None))
                rep = judge(r["protocol"], baselines=base, test_acc=r["test_acc"], seed_accs=acc,
                            bp_report=bp["protocol"] if bp else None)
                reps.append(rep)
                judged[r["id"]] = rep
            d = [rep["diagnostics"] for rep in reps]
            c3 = d[0]["D3_depth_utility"]["corrected"]
            fo = by[("method", arch, m, seeds[0], None)].get("feedback_options") or {}
            rows.append({
                "arch": arch, "method": m, "mode": METHODS[m][2], "seeds": seeds,
                "options": {k: fo.get(k) for k in ("granularity", "skip", "placement", "normalize", "share_b0")
                            if k in fo},
                "acc": acc, "frozen_seed": base.get("frozen_seed"), "frozen_matched": base.get("frozen_matched"),
                "shallow": base.get("shallow"), "head_only": base.get("head_only"),
                "d1_seed": [x["D1_scale_growth"]["max_growth"] for x in d],
                "d1_corrected": [x["D1_scale_growth"]["corrected"]["max_growth"] for x in d],
                "d1_bp": [x["D1_scale_growth"]["corrected"]["bp_max_growth"] for x in d],
                "d2_seed_gL": [x["D2_ref_validity"]["g_L"] for x in d],
                "d2_seed_fires": [x["D2_ref_validity"]["fires"] for x in d],
                "d2_corrected_fires": [x["D2_ref_validity"]["corrected"]["fires"] for x in d],
                "gL_hL": [x["D2_ref_validity"]["corrected"]["g_L_times_h_L"] for x in d],
                "d3_seed_margin": [x["D3_depth_utility"]["margin"] for x in d],
                "d3_corrected": {k: c3.get(k) for k in ("status", "margin", "ci", "n_seeds")},
                "cosine": [[c["mean"] for c in rep["credit"]["cosine"]] for rep in reps],
                "growth": [x["D1_scale_growth"]["corrected"]["per_block_growth"] for x in d],
                "verdicts": {f"{defn}_{rule}": [rep["verdicts"][defn][rule] for rep in reps]
                             for defn in ("seed", "corrected") for rule in ("any", "readme")},
            })
    penalty = []
    for lam in cfg.penalty_lambdas if cfg.penalty else []:
        rs = [by[k] for k in by if k[0] == "penalty" and k[4] == float(lam)]
        if not rs:
            continue
        rs.sort(key=lambda r: r["seed"])
        penalty.append({
            "arch": cfg.penalty_arch, "method": cfg.penalty_method, "lam": float(lam), "seeds": [r["seed"] for r in rs],
            "acc": [r["test_acc"] for r in rs],
            "d1_seed": [r["protocol"]["diagnostics"]["D1_scale_growth"]["max_growth"] for r in rs],
            "d1_corrected": [r["protocol"]["diagnostics"]["D1_scale_growth"]["corrected"]["max_growth"] for r in rs],
            "d2_seed_gL": [r["protocol"]["diagnostics"]["D2_ref_validity"]["g_L"] for r in rs],
            "null": [r.get("null") for r in rs],
        })
    summary = {"config": dataclasses.asdict(cfg), "skipped_methods": skipped, "rows": rows, "penalty": penalty,
               "runs": len(results), "torch": torch.__version__}
    with open(out / "summary.json", "w") as f:
        json.dump({**summary, "judged_reports": judged}, f, indent=1)
    md = _markdown(cfg, summary)
    (out / "summary.md").write_text(md)
    summary["plots"] = _plots(cfg, summary, out)
    summary["markdown"] = md
    return summary


def _g(v, fmt: str = "{:.3g}") -> str:
    """Median (range) of the non-missing values."""
    vals = sorted(x for x in v if x is not None and x == x)
    if not vals:
        return "–"
    mid = fmt.format(vals[len(vals) // 2])
    return mid if len(vals) == 1 else f"{mid} ({fmt.format(vals[0])}–{fmt.format(vals[-1])})"


def _markdown(cfg: AuditConfig, s: Dict[str, Any]) -> str:
    lines = [f"# FA audit: {cfg.dataset}, seeds {', '.join(map(str, cfg.seeds))}", ""]
    if s["skipped_methods"]:
        lines += ["Skipped: " + "; ".join(f"`{m}` ({why})" for m, why in s["skipped_methods"].items()), ""]
    if cfg.quick:
        lines += [f"Left out of --quick: `{a}`: {why}." for a, why in QUICK_LEFT_OUT.items() if a not in cfg.archs]
        lines += [""]
    lines += [
        "Accuracy in % (mean ± std over seeds) on the test set. D1: max per-block growth (median over seeds, range); "
        "seed = CLS/spatial-mean pooling, ratio of medians on 128 samples; corrected = per-position norm, max of "
        "ratio of medians and median of ratios. D2 seed: median ‖g_L‖ (mean-reduced loss; fires < 1e-7); D2 corr.: "
        "fires only on a numerical failure of the reference; ‖g‖·‖h‖ is scale-free. D3 seed: acc − frozen_seed "
        "(pp); D3 corr.: mean acc − method-matched frozen with its paired 95 % t-interval over seeds (it fires, or "
        "cannot pass, when the method is below a cheap baseline: frozen (seed), shallow, head-only). Verdicts: one "
        "column per definition and rule, seeds summarised (e.g. `PASS 2/3`).",
        "",
        "| arch | method | mode | acc | frozen (seed) | frozen (matched) | shallow | head-only | D1 seed | D1 corr. "
        "| D2 seed ‖g_L‖ | D2 corr. | ‖g_L‖·‖h_L‖ | D3 seed (pp) | D3 corr. (pp) | verdict seed def., rule `any` "
        "| verdict seed def., rule `readme` | verdict corrected, rule `any` | verdict corrected, rule `readme` |",
        "|" + "---|" * 19,
    ]
    for r in s["rows"]:
        c3 = r["d3_corrected"]
        d3c = "–" if c3["status"] is None else (f"{100 * c3['margin']:+.1f} [{100 * c3['ci'][0]:+.1f}, "
                                                 f"{100 * c3['ci'][1]:+.1f}] {c3['status']}")
        d3s = [x for x in r["d3_seed_margin"] if x is not None]
        v = r["verdicts"]
        lines.append(
            f"| {r['arch']} | {r['method']} | {r['mode']} | {_fmt_acc(r['acc'])} | {_fmt_acc(r['frozen_seed'] or [])} "
            f"| {_fmt_acc(r['frozen_matched'] or [])} | {_fmt_acc(r['shallow'] or [])} "
            f"| {_fmt_acc(r['head_only'] or [])} "
            f"| {_g(r['d1_seed'])} | {_g(r['d1_corrected'])} | {_g(r['d2_seed_gL'])} "
            f"| {'fires' if any(r['d2_corrected_fires']) else 'ok'} | {_g(r['gL_hL'])} "
            f"| {_g([100 * x for x in d3s], '{:+.1f}') if d3s else '–'} | {d3c} "
            f"| {_agg_verdicts(v['seed_any'])} | {_agg_verdicts(v['seed_readme'])} "
            f"| {_agg_verdicts(v['corrected_any'])} | {_agg_verdicts(v['corrected_readme'])} |")
    if s["penalty"]:
        lines += ["", f"## Penalty sweep ({cfg.penalty_method} on {cfg.penalty_arch}, {cfg.penalty_epochs} epochs) "
                      "and fresh-B null", "",
                  "Deep cosine: mean Γ_k over the interior points with the training B, against "
                  f"{cfg.null_redraws} redraws of all B (same distribution and sharing); z and empirical p per seed.",
                  "", "| λ | acc | D1 seed | D1 corr. | D2 seed ‖g_L‖ | deep cos (train B) | null mean ± std | z | p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in s["penalty"]:
            nulls = [n for n in p["null"] if n and "error" not in n]
            errs = [n["error"] for n in p["null"] if n and "error" in n]
            if nulls:
                tr = "/".join(f"{n['train']:.3f}" for n in nulls)
                nm = "/".join(f"{n['mean']:.3f} ± {n['std']:.3f}" for n in nulls)
                z = "/".join(f"{n['z']:.2g}" for n in nulls)
                pv = "/".join(f"{n['p']:.2g}" for n in nulls)
            else:
                tr = nm = z = pv = "–" if not errs else "error"
            lines.append(f"| {p['lam']:g} | {_fmt_acc(p['acc'])} | {_g(p['d1_seed'])} | {_g(p['d1_corrected'])} "
                         f"| {_g(p['d2_seed_gL'])} | {tr} | {nm} | {z} | {pv} |")
            for e in errs:
                lines.append(f"|  | null failed: {e} |||||||| ")
    lines += ["", "Passing rules out these silent failures only; it does not certify a method.", ""]
    return "\n".join(lines)


def _plots(cfg: AuditConfig, s: Dict[str, Any], out: Path) -> List[str]:
    try:
        new_figure((1, 1))
    except ImportError:
        warnings.warn("fa-audit: matplotlib is not installed, no plots (pip install 'tractable[plot]')")
        return []
    files = []
    archs = [a for a in cfg.archs if any(r["arch"] == a for r in s["rows"])]
    if not archs:
        return files
    for what, key, ylabel, fname in (("per-point cosine to BP", "cosine", "cos(signal_k, g_k)", "cosine.png"),
                                     ("growth per block", "growth", "growth (corrected)", "growth.png")):
        fig, axes = new_figure((4.5 * len(archs), 3.4), 1, len(archs), squeeze=False)
        for ax, arch in zip(axes[0], archs):
            for r in (r for r in s["rows"] if r["arch"] == arch):
                vals = r[key]
                if not vals or not vals[0]:
                    continue
                n = len(vals[0])
                mean = [sum(v[i] for v in vals) / len(vals) for i in range(n)]
                ax.plot(range(n) if key == "cosine" else range(1, n + 1), mean, marker="o", label=r["method"])
            ax.set_title(f"{arch}: {what}")
            ax.set_xlabel("feedback point k" if key == "cosine" else "block l+1")
            ax.set_ylabel(ylabel)
            if key == "growth":
                ax.set_yscale("log")
                ax.axhline(D1_THRESHOLD, color="r", lw=0.8, ls="--")
            ax.legend(fontsize=7)
        files.append(str(save_figure(fig, out / fname, dpi=110)))
    fig, axes = new_figure((5 * len(archs), 3.6), 1, len(archs), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        rows = [r for r in s["rows"] if r["arch"] == arch]
        labels = []
        for i, r in enumerate(rows):  # each method next to its method-matched frozen baseline
            m, sd = _mean_std(r["acc"])
            ax.bar(i - 0.2, 100 * m, 0.4, yerr=0 if sd != sd else 100 * sd, color="tab:blue",
                   label="method" if i == 0 else None)
            if r.get("frozen_matched"):
                m, sd = _mean_std(r["frozen_matched"])
                ax.bar(i + 0.2, 100 * m, 0.4, yerr=0 if sd != sd else 100 * sd, color="tab:gray",
                       label="method-matched frozen" if i == 0 else None)
            labels.append(r["method"])
        first = rows[0]
        for name in ("frozen_seed", "shallow", "head_only"):
            if first.get(name):
                m, sd = _mean_std(first[name])
                ax.bar(len(labels), 100 * m, 0.6, yerr=0 if sd != sd else 100 * sd, color="tab:orange")
                labels.append(name)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        finite = [100 * v for r in rows for v in r["acc"] if v == v]
        ax.set_ylim(max(0.0, min(finite) - 15) if finite else 0.0, 100)
        ax.legend(fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{arch}: accuracy vs baselines")
    files.append(str(save_figure(fig, out / "accuracy.png", dpi=110)))
    return files



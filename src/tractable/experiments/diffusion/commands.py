"""Diffusion runs after training: load a run's checkpoint, sample image grids, FID over checkpoints.

* :func:`load_run` — the model of a ``task=diffusion`` run at a checkpoint (EMA weights when the run kept an EMA:
  ``ema.safetensors``, or the EMA state of older checkpoints; a note when the EMA has not warmed up, i.e. the
  initial weights still make ≥ 1 % of it), its :class:`~tractable.diffusion.GaussianDiffusion` and dataset
  description.
* :func:`check_guidance` — refuses classifier-free guidance ≠ 1 for a run whose null label was never trained
  (an unconditional model, or ``cond_drop = 0``).
* :func:`sample` — DDIM or DDPM samples in the data's standardised space (x̂₀ clipped to the pixel range [0, 1]
  mapped through the normalisation), in batches of ``batch_size`` on ``device``; :func:`save_grid` writes them as
  a PNG grid in pixel space; :func:`sample_filename` names the grid after every sampling option.
* :func:`fid_over_checkpoints` — the Fréchet distance between generated samples and un-augmented training images
  (a seeded random subset of ``n_ref``, default all of an in-memory dataset or 50 000 of a folder dataset) at every
  checkpoint of several runs; JSON + a plot of FID vs steps side by side (runs with the same label, e.g. the
  same model and method over seeds, are averaged with ± std). Each checkpoint's ``stabilised`` flag records whether
  the Fréchet distance needed the ε·I retry (singular covariances, e.g. from dead ReLU features or few samples).

Features (``features=``): ``"classifier"`` (default, offline) — the penultimate layer of a ``small_cnn``
classifier trained here on the same dataset (seeded, cached as ``fid_classifier-<dataset>-s<seed>.safetensors``
in the cache directory) — a *relative* measure for comparing runs on that dataset, **not comparable to
Inception-FID**; ``"inception"`` — real FID with Inception-v3 (needs ``torchmetrics`` + ``torch-fidelity`` and the
FID weights).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from tractable.diffusion import (
    ClassifierFeatures,
    InceptionFeatures,
    denormalize,
    extract_features,
    feature_stats,
    frechet_distance_from_stats,
)
from tractable.train.report import new_figure, save_figure

__all__ = ["load_run", "sample", "save_grid", "pixel_clip", "dataset_images", "train_fid_classifier",
           "fid_over_checkpoints", "plot_fid", "checkpoint_steps", "check_guidance", "sample_filename",
           "fit_classifier"]


def _cfg(run_dir: Path):
    from tractable.train.config import load_run_config

    cfg = load_run_config(run_dir)
    if cfg.task != "diffusion":
        raise ValueError(f"{run_dir}: a run of task {cfg.task!r}, not a diffusion run (task=diffusion)")
    return cfg


def checkpoint_steps(run_dir: Union[str, Path]) -> List[Tuple[int, Path]]:
    """(step, checkpoint directory) of every complete checkpoint of a run, oldest first."""
    from tractable.train.checkpoint import list_checkpoints

    out = []
    for p in list_checkpoints(Path(run_dir) / "checkpoints"):
        out.append((int(p.name.split("_")[-1]), p))
    return out


def load_run(run_dir: Union[str, Path], checkpoint: Union[None, int, str, Path] = None, *, ema: bool = True,
             device="cpu", echo: Callable[[str], None] = print):
    """``(model, diffusion, info, cfg)`` of a diffusion run at ``checkpoint`` (None: latest; an int: that step; a
    path: that directory). ``ema``: use the EMA weights when the run has them (``echo`` gets a note when that EMA
    has not warmed up)."""
    from tractable.models import create_model, model_defaults
    from tractable.train.checkpoint import EMA_FILE, latest_checkpoint, load_weights
    from tractable.train.diffusion_task import DiffusionTask
    from tractable.train.loaders import build_dataset, model_shape_kwargs

    run_dir = Path(run_dir)
    cfg = _cfg(run_dir)
    if checkpoint is None:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"{run_dir}: no checkpoint yet")
    elif isinstance(checkpoint, int):
        found = dict(checkpoint_steps(run_dir))
        if checkpoint not in found:
            raise ValueError(f"{run_dir}: no checkpoint at step {checkpoint}; available: {sorted(found)}")
        ckpt = found[checkpoint]
    else:
        ckpt = Path(checkpoint)
    info = build_dataset(cfg.data, "test").info
    kw = model_shape_kwargs(info, model_defaults(cfg.model.name))
    kw.update(dict(cfg.model.kwargs))
    model = create_model(cfg.model.name, **kw)
    from tractable.models.checkpoint_io import load_torch_file

    state = load_torch_file(ckpt / "state.pt")
    if ema and state.get("ema") is not None:
        if (ckpt / EMA_FILE).is_file():
            load_weights(ckpt / EMA_FILE, model)
        else:  # checkpoints written before the EMA was exported
            model.load_state_dict(state["ema"]["module"])
        e = state["ema"]
        share = float(e.get("init_share", float(e["decay"]) ** int(e["num_updates"])))
        if share >= 0.01:
            echo(f"note: the EMA at {ckpt.name} has had {int(e['num_updates'])} updates (decay {e['decay']}, "
                 f"{'with' if e.get('warmup') else 'no'} warm-up): the initial weights still make {100 * share:.0f} % "
                 "of it; --no-ema samples the trained weights")
    else:
        load_weights(ckpt, model)
    model.to(device).eval()
    diffusion = DiffusionTask.options_from_dict(cfg.task_kwargs)
    from tractable.diffusion import GaussianDiffusion

    diffusion = GaussianDiffusion(diffusion.num_timesteps, diffusion.schedule, diffusion.prediction)
    return model, diffusion, info, cfg


def pixel_clip(info) -> Tuple[List[float], List[float]]:
    """Per-channel bounds of pixel values [0, 1] in the standardised space."""
    return ([-m / s for m, s in zip(info.mean, info.std)], [(1 - m) / s for m, s in zip(info.mean, info.std)])


def check_guidance(cfg, model, guidance: float) -> None:
    """ValueError for ``guidance`` ≠ 1 when the run never trained the null label (classifier-free guidance would
    mix in an untrained embedding): an unconditional model, or ``task_kwargs.cond_drop`` = 0."""
    from tractable.train.diffusion_task import DiffusionTask, effective_cond_drop

    if guidance == 1.0:
        return
    if not getattr(model, "class_cond", False):
        raise ValueError(f"guidance: {guidance} needs a class-conditional model (model.kwargs.class_cond=true); "
                         "this run is unconditional: use --guidance 1")
    drop = effective_cond_drop(DiffusionTask.options_from_dict(cfg.task_kwargs).cond_drop, model)
    if drop <= 0:
        raise ValueError(f"guidance: {guidance} needs the null label, but this run was trained with "
                         "task_kwargs.cond_drop=0, so its null embedding is untrained: use --guidance 1, or train with "
                         "cond_drop > 0 (the default for class-conditional runs is 0.1)")


def sample_filename(*, sampler: str, steps: int, spacing: str, eta: float, guidance: float, ema: bool,
                    step: Optional[int], seed: int, n: int) -> str:
    """The default PNG name of ``diffusion-sample``: every option that changes the images, e.g.
    ``ddim50-trailing-eta0.5-cfg1.5-noema-step240-s0-n64.png`` (defaults of η, guidance and EMA left out)."""
    from tractable.train.outputs import option_slug

    return option_slug({sampler: steps, "": spacing, "eta": eta if sampler == "ddim" and eta != 0 else None,
                        "cfg": guidance if guidance != 1 else None, "noema": "" if not ema else None,
                        "step": "last" if step is None else step, "s": seed, "n": n}) + ".png"


@torch.no_grad()
def sample(model, diffusion, info, n: int, *, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
           seed: int = 0, labels: Optional[torch.Tensor] = None, guidance: float = 1.0, batch_size: int = 500,
           spacing: str = "trailing", device="cpu") -> torch.Tensor:
    """``n`` samples (standardised space, CPU float32), drawn ``batch_size`` at a time on ``device`` (the noise from
    one generator seeded by ``seed`` on that device). Class-conditional models get ``labels`` (default: 0, 1, …
    cycling over the classes)."""
    from tractable.diffusion import ddim_sample, ddpm_sample

    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler: must be 'ddim' or 'ddpm', got {sampler!r}")
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    g = torch.Generator(device=device).manual_seed(int(seed))
    cond_model = getattr(model, "class_cond", False)
    if cond_model and labels is None:
        labels = torch.arange(n) % info.num_classes
    out = []
    clip = pixel_clip(info)
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        shape = (m, *info.shape)
        cond = labels[i:i + m].to(device) if cond_model else None
        if sampler == "ddim":
            x = ddim_sample(model, shape, steps=steps, eta=eta, generator=g, cond=cond, diffusion=diffusion,
                            guidance=guidance, clip=clip, spacing=spacing, device=device)
        else:
            x = ddpm_sample(model, shape, steps=steps, generator=g, cond=cond, diffusion=diffusion,
                            guidance=guidance, clip=clip, spacing=spacing, device=device)
        out.append(x.float().cpu())
    return torch.cat(out)


def save_grid(images: torch.Tensor, info, path: Union[str, Path], nrow: Optional[int] = None) -> Path:
    """Standardised images → pixel space → one PNG grid (matplotlib)."""
    try:
        from matplotlib.image import imsave
    except ImportError as e:
        raise ImportError("sample grids need matplotlib: pip install 'tractable[plot]'") from e
    import numpy as np

    x = denormalize(images, info.mean, info.std).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    pad = 1
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[k]
    arr = grid.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 256 // max(arr.shape[0], 1))
    arr = np.kron(arr, np.ones((scale, scale, 1)))  # nearest-neighbour upscaling for small images
    if c == 1:
        imsave(path, arr[:, :, 0], cmap="gray", vmin=0, vmax=1)
    else:
        imsave(path, np.clip(arr, 0, 1))
    return path


def dataset_images(cfg, split: str = "train", limit: Optional[int] = None, *, seed: int = 0,
                   num_workers: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, object]:
    """(standardised images, labels, info) of a run's dataset split, **un-augmented**: in-memory datasets as stored,
    folder datasets through the deterministic transform (``diffusion_noflip`` for runs trained with a ``diffusion``
    transform, ``eval`` otherwise). At most ``limit`` images (default: all of an in-memory dataset, 50 000 of a folder
    dataset), a random subset drawn with ``seed`` when the split is larger, in index order."""
    import copy

    from tractable.data import to_float
    from tractable.data.convert import normalize
    from tractable.train.loaders import build_dataset, is_array_dataset

    data_cfg = copy.deepcopy(cfg.data)
    transform = data_cfg.kwargs.get("transform")
    if isinstance(transform, str):
        data_cfg.kwargs["transform"] = "diffusion_noflip" if transform.startswith("diffusion") else "eval"
    ds = build_dataset(data_cfg, split)
    info = ds.info
    if limit is None:
        limit = len(ds) if is_array_dataset(ds) else 50_000
    if limit < 1:
        raise ValueError(f"limit: must be >= 1, got {limit}")
    idx = torch.arange(len(ds))
    if limit < len(ds):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(seed)))[:limit].sort().values
    if is_array_dataset(ds):
        return normalize(to_float(ds.x[idx]), info.mean, info.std), ds.y[idx], info
    sub = torch.utils.data.Subset(ds, idx.tolist())
    loader = torch.utils.data.DataLoader(sub, batch_size=256, shuffle=False,
                                         num_workers=cfg.data.num_workers if num_workers is None else num_workers)
    xs, ys = [], []
    for xb, yb in loader:  # folder items are uint8, as stored: the same to_float + normalize as the loaders
        xs.append(normalize(to_float(xb), info.mean, info.std))
        ys.append(torch.as_tensor(yb))
    return torch.cat(xs), torch.cat(ys), info


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                   seed: int) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy on ``(x, y)``, shuffled by a generator seeded with
    ``seed`` (the FID proxy's feature classifiers); returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def train_fid_classifier(cfg, *, seed: int = 0, epochs: int = 10, cache_dir: Union[str, Path, None] = None,
                         echo: Callable[[str], None] = print) -> nn.Module:
    """A ``small_cnn`` trained (Adam, batch 64) on the run's training split, for :class:`ClassifierFeatures`;
    cached by dataset name, image shape and seed."""
    from safetensors.torch import load_file, save_file

    from tractable.models import create_model

    x, y, info = dataset_images(cfg, "train")
    torch.manual_seed(seed)  # the initial weights too: the same classifier whatever the caller's RNG state
    model = create_model("small_cnn", num_classes=info.num_classes, in_channels=info.shape[0],
                         image_size=info.shape[1])
    path = None
    if cache_dir is not None:
        shape = "x".join(map(str, info.shape))
        path = Path(cache_dir) / f"fid_classifier-{info.name}-{shape}-n{len(x)}-s{seed}.safetensors"
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
            return model.eval()
    fit_classifier(model, x, y, epochs=epochs, batch_size=64, lr=1e-3, seed=seed)
    xt, yt, _ = dataset_images(cfg, "test")
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    echo(f"FID feature classifier (small_cnn, {epochs} epochs): test accuracy {100 * acc:.1f}%")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), str(path))
    return model


def _earlier_fid(out: Path, options: Dict[str, object]) -> Dict[str, object]:
    """The runs of an earlier ``fid.json`` in ``out`` (kept in the new one); an error when it was computed with
    other options (its numbers would not be comparable)."""
    path = out / "fid.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise FileExistsError(f"fid --out: {path} exists and is not readable JSON; choose another --out") from None
    diff = [f"{k}={old.get(k)!r}" for k in options if old.get(k) != options[k]]
    if diff:
        raise FileExistsError(f"fid --out: {path} holds FIDs computed with {', '.join(diff)}; they are not "
                              "comparable with this run's — choose another --out")
    return dict(old.get("runs") or {})


def _label(cfg) -> str:
    return f"{cfg.model.name} {cfg.method.name}"


def fid_over_checkpoints(run_dirs: Sequence[Union[str, Path]], *, n: int = 1000, steps: int = 50,
                         sampler: str = "ddim", features: str = "classifier", seed: int = 0, ema: bool = True,
                         out: Union[str, Path, None] = None, every: int = 1, device="cpu", batch_size: int = 500,
                         spacing: str = "trailing", n_ref: Optional[int] = None,
                         echo: Callable[[str], None] = print) -> Dict[str, object]:
    """FID (see the module docstring) at every ``every``-th checkpoint of each run, against un-augmented training
    images (:func:`dataset_images` with ``n_ref`` and ``seed``). Sampling and feature extraction run on ``device``,
    ``batch_size`` images at a time.

    Returns ``{"runs": {run_dir: {"label", "steps", "fid"}}, "features": ..., ...}`` and, with ``out``, writes
    ``out/fid.json``, ``out/fid.md`` and ``out/fid.png``.
    """
    from tractable.diffusion import SPACINGS

    if features not in ("classifier", "inception"):
        raise ValueError(f"features: must be 'classifier' or 'inception', got {features!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing: must be one of {', '.join(map(repr, SPACINGS))}, got {spacing!r}")
    for key, v in (("n", n), ("steps", steps), ("every", every), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"{key}: must be >= 1, got {v}")
    if not run_dirs:
        raise ValueError("fid: give at least one run directory")
    for name, value in (("--n", n), ("--steps", steps), ("--every", every)):  # every check before any work
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fid {name}: must be an integer >= 1, got {value!r}")
    if n < 2:
        raise ValueError(f"fid --n: a Fréchet distance needs at least 2 samples, got {n}")
    for run_dir in map(Path, run_dirs):
        _cfg(run_dir)
        if not checkpoint_steps(run_dir):
            raise FileNotFoundError(f"fid: {run_dir} has no checkpoint yet")
    if out is not None:
        from tractable.train.outputs import check_output_dir, claim_output_dir

        check_output_dir(out, "fid", own=("fid.json",))
        options = {"features": features, "n": n, "steps": steps, "sampler": sampler, "ema": ema, "seed": seed,
                   "spacing": spacing, "n_ref": n_ref}
        earlier = _earlier_fid(Path(out), options)
        out = claim_output_dir(out, "fid", own=("fid.json",))
    device = torch.device(device)
    results: Dict[str, object] = {"features": features, "n": n, "steps": steps, "sampler": sampler, "ema": ema,
                                  "spacing": spacing, "n_ref": n_ref, "seed": seed, "device": str(device), "runs": {}}
    refs: Dict[str, object] = {}
    for run_dir in map(Path, run_dirs):
        cfg = _cfg(run_dir)
        key = json.dumps([cfg.data.name, cfg.data.subset, cfg.data.mean, cfg.data.std, dict(cfg.data.kwargs)])
        if key not in refs:
            x, _, info = dataset_images(cfg, "train", n_ref, seed=seed)
            if features == "classifier":
                cache = Path(out) if out is not None else run_dir.parent
                clf = train_fid_classifier(cfg, seed=seed, cache_dir=cache, echo=echo).to(device)
                extractor = ClassifierFeatures(clf)
                prep = lambda im: im  # noqa: E731  (the classifier sees standardised images)
            else:
                extractor = InceptionFeatures(device=device)
                prep = lambda im, _i=info: denormalize(im, _i.mean, _i.std)  # noqa: E731
            feats = extract_features(extractor, prep(x), batch_size=batch_size, device=device)
            refs[key] = (extractor, prep, feature_stats(feats))
        extractor, prep, (mu_r, sig_r) = refs[key]
        ckpts = checkpoint_steps(run_dir)[::-1][::every][::-1]  # always includes the last one
        entry = {"label": _label(cfg), "seed": cfg.train.seed, "steps": [], "fid": []}
        for step, ckpt in ckpts:
            t0 = time.perf_counter()
            model, diffusion, info, _ = load_run(run_dir, ckpt, ema=ema, device=device, echo=echo)
            imgs = sample(model, diffusion, info, n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size,
                          spacing=spacing, device=device)
            mu, sig = feature_stats(extract_features(extractor, prep(imgs), batch_size=batch_size, device=device))
            with warnings.catch_warnings(record=True) as caught:  # singular covariances (e.g. dead ReLU features)
                warnings.simplefilter("always")
                fid = frechet_distance_from_stats(mu, sig, mu_r, sig_r)
            entry["steps"].append(step)
            entry["fid"].append(fid)
            entry.setdefault("stabilised", []).append(bool(caught))  # ε·I added to the covariances
            echo(f"{run_dir.name} step {step}: FID {fid:.4g} ({time.perf_counter() - t0:.1f} s)")
        results["runs"][str(run_dir)] = entry
    if out is not None:
        results["runs"] = {**earlier, **results["runs"]}  # a re-run with fewer runs never shrinks fid.json
        (out / "fid.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "fid.md").write_text(fid_table(results))
        try:
            plot_fid(results, out / "fid.png")
        except ImportError as e:
            echo(f"(no plot: {e})")
    return results


def _group(results) -> Dict[str, Dict[int, List[float]]]:
    groups: Dict[str, Dict[int, List[float]]] = {}
    for entry in results["runs"].values():
        g = groups.setdefault(entry["label"], {})
        for s, f in zip(entry["steps"], entry["fid"]):
            g.setdefault(s, []).append(f)
    return groups


def _mean_std(v: List[float]) -> Tuple[float, float]:
    m = sum(v) / len(v)
    sd = math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def fid_table(results) -> str:
    """Markdown: one row per label (runs averaged), one column per checkpoint step, mean ± std (n seeds)."""
    groups = _group(results)
    steps = sorted({s for g in groups.values() for s in g})
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for label, g in groups.items():
        cells = []
        for s in steps:
            if s in g:
                m, sd = _mean_std(g[s])
                cells.append(f"{m:.3g} ± {sd:.2g} ({len(g[s])})" if len(g[s]) > 1 else f"{m:.3g}")
            else:
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_fid(results, path: Union[str, Path]) -> Path:
    """FID vs training steps, one line per label (mean over runs, ± std band)."""
    fig, ax = new_figure((6, 4))
    for label, g in _group(results).items():
        steps = sorted(g)
        ms = [_mean_std(g[s]) for s in steps]
        m = [a for a, _ in ms]
        sd = [b for _, b in ms]
        line, = ax.plot(steps, m, marker="o", label=label, linestyle="--" if "tract" in label else "-")
        ax.fill_between(steps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"FID ({results['features']} features)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)

"""The diffusion study (docs/diffusion.md): does TrAct on a DiT's patch embedding speed up diffusion training?

open-TrAct's claim (FFHQ-256 latents, B-scale models, one seed): a "small yet consistent improvement early", then
a "slight degradation". This study tests it on data and a model where the claim can show, with paired seeds and
intervals:

* **data** — Fashion-MNIST (60 000 training / 10 000 test images), zero-padded from 28² to 32² and scaled to
  [−1, 1]; unconditional, as open-TrAct's FFHQ runs.
* **model** — a small DiT with **4×4 patches** on the 1-channel image: n = 16 inputs per token for TrAct's
  patch-embedding Gram matrix, as DiT-B/2 on 4-channel latents (2·2·4 = 16); (hidden, depth, heads) =
  (64, 3, 4) at ``--scale cpu``.
* **recipe** — open-TrAct's: x₀-prediction, cosine schedule (T = 1000), Min-SNR-5; EMA with DiT's decay 0.9999
  and the warm-up of :class:`~tractable.train.ema.ModelEMA`; constant learning rate, no weight decay.
* **arms** — ``adamw`` (lr 1e-3; open-TrAct's optimizer) and ``sgd`` (momentum 0.9, lr 0.1; the optimizer where
  TrAct's rescaling is not normalised away). In each arm plain backprop vs TrAct (λ = 0.1 on
  ``x_embedder.proj``). **Paired seeds**: seed s gives both methods the same initial weights, batches, timesteps,
  noise, evaluation noise and sampling noise; only the learning rule differs.
* **primary metric** — the held-out Min-SNR-weighted loss on 512 fixed test images with fixed t and ε (the same
  for every run), every ``eval_every`` steps, for the live weights and the EMA.
* **secondary metric** — a Fréchet distance ("FID proxy") at 3 checkpoints: ``n_fid`` DDIM samples (EMA weights,
  trailing spacing, x̂₀ clipped to [−1, 1]) against the 10 000 test images, in the 64-d penultimate features of a
  small CNN classifier trained here on Fashion-MNIST (offline; **not comparable to Inception-FID**). Beside it, the
  real-vs-real floor: ``n_fid`` training images against the same reference. Intervals: 95 % bootstrap over the
  generated images (and over seeds for the paired difference).
* **reading rule** — an effect is called only where the 95 % interval of the paired difference TrAct − plain
  (Student t over seeds) excludes zero.

Run (``--scale cpu`` ≈ 20-25 CPU-minutes at one thread; ``--scale full`` is the GPU version)::

    python -m tractable.experiments.diffusion.study runs/diffusion-study            # train, evaluate, report
    python -m tractable.experiments.diffusion.study runs/diffusion-study --scale full --device cuda

Finished runs are kept (``<out>/runs/*.pt``) and skipped when the command is run again, so an interrupted study
resumes; the report (``results.json``, ``results.md``, ``loss.png``, ``fid.png``) is rewritten from all of them.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tractable.stats import t_interval

__all__ = ["StudyScale", "SCALES", "ARMS", "METHODS", "load_fashion_32", "train_one", "run_study", "report",
           "demo_section"]

METHODS = ("plain", "tract")


@dataclass(frozen=True)
class Arm:
    optim: str
    lr: float
    momentum: float = 0.0


ARMS: Dict[str, Arm] = {"adamw": Arm("adamw", 1e-3), "sgd": Arm("sgd", 0.1, momentum=0.9)}


@dataclass(frozen=True)
class StudyScale:
    hidden: int
    depth: int
    heads: int
    batch_size: int
    steps: int
    eval_every: int
    fid_steps: Tuple[int, ...]
    n_fid: int
    sampler_steps: int
    seeds: Dict[str, int] = field(default_factory=dict)  # arm → number of paired seeds
    n_eval: int = 512
    bootstrap: int = 300
    lam: float = 0.1


SCALES: Dict[str, StudyScale] = {
    # ≈ 20-25 CPU-minutes at one thread: 5 + 3 paired seeds × 2 methods × 800 steps of batch 32
    "cpu": StudyScale(hidden=64, depth=3, heads=4, batch_size=32, steps=800, eval_every=100, fid_steps=(200, 400, 800),
                      n_fid=400, sampler_steps=20, seeds={"adamw": 5, "sgd": 3}),
    # the GPU version: DiT-S width at patch 4, open-TrAct's batch and checkpoints, FID over 10k samples, DDIM-50
    "full": StudyScale(hidden=384, depth=12, heads=6, batch_size=256, steps=50_000, eval_every=1000,
                       fid_steps=(10_000, 20_000, 50_000), n_fid=10_000, sampler_steps=50,
                       seeds={"adamw": 5, "sgd": 5}, n_eval=2048, bootstrap=1000),
}


# -- data and features ---------------------------------------------------------------------------------------
def load_fashion_32(split: str) -> torch.Tensor:
    """Fashion-MNIST ``split`` as float32 (N, 1, 32, 32) in [−1, 1]: 28² zero-padded by 2 pixels on each side."""
    from tractable.data import load_dataset

    ds = load_dataset("fashion_mnist", split)
    x = ds.x.reshape(-1, 1, 28, 28).float().div(255.0)
    return nn.functional.pad(x, (2, 2, 2, 2)).mul(2.0).sub(1.0)


def _classifier(x_train: torch.Tensor, y_train: torch.Tensor, cache: Path, *, seed: int = 0, epochs: int = 2,
                n: int = 20_000, echo: Callable[[str], None] = print) -> nn.Module:
    """A ``small_cnn`` (widths 16/32/64) trained on the first ``n`` training images: the FID proxy's features."""
    from safetensors.torch import load_file, save_file

    from tractable.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model("small_cnn", num_classes=10, in_channels=1, image_size=32, widths=(16, 32, 64))
    if cache.is_file():
        model.load_state_dict(load_file(str(cache)))
        return model.eval()
    from tractable.experiments.diffusion.commands import fit_classifier

    x, y = x_train[:n], y_train[:n]
    fit_classifier(model, x, y, epochs=epochs, batch_size=128, lr=2e-3, seed=seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(cache))
    echo(f"feature classifier trained on {len(x)} images, {epochs} epochs")
    return model


# -- one run ---------------------------------------------------------------------------------------------------
def _model(scale: StudyScale, seed: int) -> nn.Module:
    from tractable.models.dit import DiT

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DiT(image_size=32, in_channels=1, patch_size=4, hidden=scale.hidden, depth=scale.depth,
                   heads=scale.heads)


def _optimizer(params, arm: Arm):
    if arm.optim == "adamw":
        return torch.optim.AdamW(params, lr=arm.lr, weight_decay=0.0)
    return torch.optim.SGD(params, lr=arm.lr, momentum=arm.momentum)


@torch.no_grad()
def _heldout(model, diffusion, x, t, noise, batch: int = 256) -> float:
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch):
        total += float(diffusion.losses(model, x[i:i + batch], t=t[i:i + batch], noise=noise[i:i + batch]).sum())
    model.train(was_training)
    return total / len(x)


@torch.no_grad()
def _generate(model, diffusion, n: int, steps: int, seed: int, device, batch: int = 500) -> torch.Tensor:
    from tractable.diffusion import ddim_sample

    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        out.append(ddim_sample(model, (m, 1, 32, 32), steps=steps, generator=g, diffusion=diffusion, clip=1.0,
                               device=device).cpu())
    return torch.cat(out)


def train_one(arm_name: str, method: str, seed: int, scale: StudyScale, x_train: torch.Tensor,
              heldout: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              features: Callable[[torch.Tensor], torch.Tensor],
              *, device="cpu") -> Dict[str, object]:
    """Train one run; returns its held-out loss curves and the FID-proxy features of its samples."""
    import tractable
    from tractable.diffusion import GaussianDiffusion
    from tractable.train.ema import DIT_DECAY, ModelEMA
    from tractable.train.rng import mix_seed

    arm = ARMS[arm_name]
    device = torch.device(device)
    model = _model(scale, seed).to(device)
    if method == "tract":
        tractable.TrAct(model.x_embedder.proj, l=scale.lam)
    ema = ModelEMA(model, DIT_DECAY, warmup=True)
    opt = _optimizer(model.parameters(), arm)
    diffusion = GaussianDiffusion(1000, schedule="cosine", prediction="x0")
    g_data = torch.Generator().manual_seed(mix_seed(seed, 1))
    g_noise = torch.Generator(device=device).manual_seed(mix_seed(seed, 2))
    xh, th, nh = (v.to(device) for v in heldout)
    curve = {"step": [], "loss": [], "ema_loss": []}
    fid_feats: Dict[int, torch.Tensor] = {}
    perm, pos = torch.randperm(len(x_train), generator=g_data), 0
    t0 = time.process_time()
    model.train()
    for step in range(1, scale.steps + 1):
        if pos + scale.batch_size > len(perm):
            perm, pos = torch.randperm(len(x_train), generator=g_data), 0
        xb = x_train[perm[pos:pos + scale.batch_size]].to(device)
        pos += scale.batch_size
        loss = diffusion.loss(model, xb, weighting="min_snr", gamma=5.0, generator=g_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        if step % scale.eval_every == 0 or step in scale.fid_steps:
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{arm_name}-{method}-s{seed}: the loss diverged by step {step}")
            curve["step"].append(step)
            curve["loss"].append(_heldout(model, diffusion, xh, th, nh))
            curve["ema_loss"].append(_heldout(ema.module, diffusion, xh, th, nh))
        if step in scale.fid_steps:
            imgs = _generate(ema.module, diffusion, scale.n_fid, scale.sampler_steps, mix_seed(seed, 3), device)
            fid_feats[step] = features(imgs)
    return {"arm": arm_name, "method": method, "seed": seed, "curve": curve,
            "fid_features": {int(k): v for k, v in fid_feats.items()}, "cpu_seconds": time.process_time() - t0,
            "images_seen": scale.steps * scale.batch_size}


# -- the study ---------------------------------------------------------------------------------------------------
def run_study(out_dir, *, scale: str = "cpu", arms: Sequence[str] = ("adamw", "sgd"), seeds: Optional[int] = None,
              device="cpu", echo: Callable[[str], None] = print) -> Dict[str, object]:
    """Train every (arm, seed, method) not yet on disk, then write the report (see the module docstring)."""
    from tractable.data import load_dataset
    from tractable.diffusion import ClassifierFeatures, extract_features

    sc = SCALES[scale]
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    x_train, x_test = load_fashion_32("train"), load_fashion_32("test")
    y_train = load_dataset("fashion_mnist", "train").y
    clf = _classifier(x_train, y_train, out_dir / "fid_classifier.safetensors", echo=echo)
    extractor = ClassifierFeatures(clf)
    features = lambda im: extract_features(extractor, im.cpu())  # noqa: E731
    ref_path = out_dir / "reference.pt"
    if not ref_path.is_file():
        g = torch.Generator().manual_seed(7)
        floor_idx = torch.randperm(len(x_train), generator=g)[:sc.n_fid]
        torch.save({"test": features(x_test), "train_sample": features(x_train[floor_idx])}, ref_path)
    g = torch.Generator().manual_seed(12345)  # the held-out set, t and ε: the same for every run
    idx = torch.randperm(len(x_test), generator=g)[:sc.n_eval]
    xh = x_test[idx]
    heldout = (xh, torch.randint(0, 1000, (len(xh),), generator=g), torch.randn(xh.shape, generator=g))
    for arm in arms:
        for seed in range(seeds if seeds is not None else sc.seeds[arm]):
            for method in METHODS:
                path = out_dir / "runs" / f"{arm}-{method}-s{seed}.pt"
                if path.is_file():
                    continue
                t0 = time.time()
                res = train_one(arm, method, seed, sc, x_train, heldout, features, device=device)
                res["scale"] = asdict(sc)
                torch.save(res, path)
                curve = res["curve"]
                echo(f"{path.stem}: held-out loss {curve['loss'][-1]:.4f} (EMA {curve['ema_loss'][-1]:.4f}), "
                     f"{res['cpu_seconds']:.0f} CPU-s, {time.time() - t0:.0f} s")
    return report(out_dir, echo=echo)


def _t_interval(d: Sequence[float]) -> Tuple[float, float, float]:
    """Mean and 95 % Student-t interval of paired differences (NaN bounds for one pair)."""
    r = t_interval(d)
    return (r["mean"], r["lo"], r["hi"]) if r["n"] > 1 else (r["mean"], float("nan"), float("nan"))


def _fd(a: torch.Tensor, ref_stats) -> float:
    from tractable.diffusion import feature_stats, frechet_distance_from_stats

    mu, sig = feature_stats(a)
    return frechet_distance_from_stats(mu, sig, *ref_stats)


def _boot(feats: List[torch.Tensor], ref_stats, B: int, seed: int) -> List[float]:
    """B bootstrap replicates of the mean FD over runs (each run's images resampled with replacement)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(B):
        vals = [_fd(f[torch.randint(0, len(f), (len(f),), generator=g)], ref_stats) for f in feats]
        out.append(sum(vals) / len(vals))
    return out


def _pct(v: List[float]) -> Tuple[float, float]:
    s = sorted(v)
    return s[int(0.025 * (len(s) - 1))], s[int(math.ceil(0.975 * (len(s) - 1)))]


def report(out_dir, *, echo: Callable[[str], None] = print) -> Dict[str, object]:
    """Tables (paired differences with 95 % intervals), curves and FID plot from ``<out>/runs/*.pt``."""
    from tractable.diffusion import feature_stats

    out_dir = Path(out_dir)
    runs = [torch.load(p, weights_only=False) for p in sorted((out_dir / "runs").glob("*.pt"))]
    if not runs:
        raise FileNotFoundError(f"no finished runs under {out_dir / 'runs'}")
    ref = torch.load(out_dir / "reference.pt", weights_only=False)
    ref_stats = feature_stats(ref["test"])
    B = runs[0]["scale"]["bootstrap"]
    res: Dict[str, object] = {"scale": runs[0]["scale"], "arms": {}}
    floor = _fd(ref["train_sample"], ref_stats)
    res["fid_floor"] = {"value": floor, "ci": _pct(_boot([ref["train_sample"]], ref_stats, B, 0))}
    res["cpu_seconds"] = sum(r["cpu_seconds"] for r in runs)
    for arm in ARMS:
        by = {(r["method"], r["seed"]): r for r in runs if r["arm"] == arm}
        seeds = sorted(s for (m, s) in by if m == "plain" and ("tract", s) in by)
        if not seeds:
            continue
        steps = by[("plain", seeds[0])]["curve"]["step"]
        a: Dict[str, object] = {"seeds": seeds, "steps": steps, "loss": {}, "fid": {}}
        for key in ("loss", "ema_loss"):
            rows = []
            for i, s in enumerate(steps):
                p = [by[("plain", k)]["curve"][key][i] for k in seeds]
                t = [by[("tract", k)]["curve"][key][i] for k in seeds]
                m, lo, hi = _t_interval([b - c for b, c in zip(t, p)])
                rows.append({"step": s, "plain": sum(p) / len(p), "tract": sum(t) / len(t), "diff": m, "ci": [lo, hi],
                             "rel": m / (sum(p) / len(p))})
            a["loss"][key] = rows
        fsteps = sorted(by[("plain", seeds[0])]["fid_features"])
        for j, s in enumerate(fsteps):
            fp = [by[("plain", k)]["fid_features"][s] for k in seeds]
            ft = [by[("tract", k)]["fid_features"][s] for k in seeds]
            vp, vt = [_fd(f, ref_stats) for f in fp], [_fd(f, ref_stats) for f in ft]
            m, lo, hi = _t_interval([b - c for b, c in zip(vt, vp)])
            # bootstrap of the paired difference: seeds and images resampled
            g = torch.Generator().manual_seed(100 + j)
            boots = []
            for _ in range(B):
                ks = torch.randint(0, len(seeds), (len(seeds),), generator=g).tolist()
                d = []
                for k in ks:
                    ip = torch.randint(0, len(fp[k]), (len(fp[k]),), generator=g)
                    it = torch.randint(0, len(ft[k]), (len(ft[k]),), generator=g)
                    d.append(_fd(ft[k][it], ref_stats) - _fd(fp[k][ip], ref_stats))
                boots.append(sum(d) / len(d))
            a["fid"][s] = {"plain": vp, "tract": vt, "plain_ci": _pct(_boot(fp, ref_stats, B, 200 + j)),
                           "tract_ci": _pct(_boot(ft, ref_stats, B, 300 + j)), "diff": m, "t_ci": [lo, hi],
                           "boot_ci": _pct(boots)}
        res["arms"][arm] = a
    (out_dir / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = results_markdown(res)
    (out_dir / "results.md").write_text(md)
    try:
        plot_study(res, out_dir)
    except ImportError as e:
        echo(f"(no plots: {e})")
    echo(md)
    return res


def _iv(lo: float, hi: float, f: str = ".4f") -> str:
    return f"[{lo:+{f}}, {hi:+{f}}]" + (" *" if lo > 0 or hi < 0 else "")


def results_markdown(res) -> str:
    sc = res["scale"]
    lines = [f"Held-out Min-SNR loss (primary; {sc['n_eval']} test images, fixed t and ε; lower is better): "
             "mean over paired seeds; TrAct − plain with its 95 % t-interval (* = excludes zero).", ""]
    for arm, a in res["arms"].items():
        n = len(a["seeds"])
        lines += [f"**{arm}** ({n} paired seeds)", "",
                  "| step | plain | TrAct | TrAct − plain [95 % CI] | EMA plain | EMA TrAct | "
                  "EMA TrAct − plain [95 % CI] |",
                  "|---|---|---|---|---|---|---|"]
        for r, e in zip(a["loss"]["loss"], a["loss"]["ema_loss"]):
            lines.append(f"| {r['step']} | {r['plain']:.4f} | {r['tract']:.4f} | {r['diff']:+.4f} {_iv(*r['ci'])} | "
                         f"{e['plain']:.4f} | {e['tract']:.4f} | {e['diff']:+.4f} {_iv(*e['ci'])} |")
        lines.append("")
    fl = res["fid_floor"]
    lines += [f"FID proxy (secondary; {sc['n_fid']} DDIM-{sc['sampler_steps']} samples of the EMA weights vs the "
              f"10 000 test images, classifier features; lower is better). Real-vs-real floor ({sc['n_fid']} "
              f"training images): {fl['value']:.2f} [{fl['ci'][0]:.2f}, {fl['ci'][1]:.2f}].", "",
              "| arm | step | plain [95 % bootstrap] | TrAct [95 % bootstrap] | TrAct − plain | t-interval | "
              "bootstrap (seeds × images) |", "|---|---|---|---|---|---|---|"]
    for arm, a in res["arms"].items():
        for s, f in a["fid"].items():
            mp, mt = sum(f["plain"]) / len(f["plain"]), sum(f["tract"]) / len(f["tract"])
            lines.append(f"| {arm} | {s} | {mp:.2f} [{f['plain_ci'][0]:.2f}, {f['plain_ci'][1]:.2f}] | "
                         f"{mt:.2f} [{f['tract_ci'][0]:.2f}, {f['tract_ci'][1]:.2f}] | {f['diff']:+.2f} | "
                         f"{_iv(*f['t_ci'], f='.2f')} | {_iv(*f['boot_ci'], f='.2f')} |")
    lines += ["", f"Total training + evaluation: {res['cpu_seconds'] / 60:.1f} CPU-minutes (process time)."]
    return "\n".join(lines) + "\n"


def plot_study(res, out_dir: Path) -> None:
    from tractable.train.report import new_figure, save_figure

    arms = list(res["arms"])
    fig, axes = new_figure((5 * len(arms), 3.6), ncols=len(arms), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        a = res["arms"][arm]
        for key, style in (("loss", "-"), ("ema_loss", ":")):
            rows = a["loss"][key]
            s = [r["step"] for r in rows]
            d = [r["diff"] for r in rows]
            ax.plot(s, d, style, marker="o", label=f"{'EMA' if key == 'ema_loss' else 'live'} weights")
            ax.fill_between(s, [r["ci"][0] for r in rows], [r["ci"][1] for r in rows], alpha=0.2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{arm}: held-out loss, TrAct − plain ({len(a['seeds'])} seeds, 95 % CI)", fontsize=9)
        ax.set_xlabel("training steps")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, out_dir / "loss.png", dpi=120)
    fig, axes = new_figure((5 * len(arms), 3.6), ncols=len(arms), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        a = res["arms"][arm]
        steps = sorted(a["fid"], key=int)
        for m, style in (("plain", "-"), ("tract", "--")):
            v = [sum(a["fid"][s][m]) / len(a["fid"][s][m]) for s in steps]
            ci = [a["fid"][s][f"{m}_ci"] for s in steps]
            x = [int(s) for s in steps]
            line, = ax.plot(x, v, style, marker="o", label="TrAct λ=0.1" if m == "tract" else m)
            ax.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], color=line.get_color(), alpha=0.15)
        ax.axhline(res["fid_floor"]["value"], color="grey", ls=":", label="real-vs-real floor")
        ax.set_yscale("log")
        ax.set_title(f"{arm}: FID proxy (EMA, {len(a['seeds'])} seeds)", fontsize=9)
        ax.set_xlabel("training steps")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, out_dir / "fid.png", dpi=120)


# -- the demo section --------------------------------------------------------------------------------------
def _demo_config(model: str, method: str, seed: int, out_dir: Path, *, epochs: int, lr: float):
    from tractable.train.config import apply_overrides, config_from_dict

    base = {
        "task": "diffusion",
        "task_kwargs": {"prediction": "x0", "schedule": "cosine", "weighting": "min_snr", "gamma": 5.0},
        "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 512},
        "model": {"name": model},
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.0},
        "train": {"epochs": epochs, "seed": seed, "device": "cpu", "progress": False, "plots": False,
                  "save_every": 0, "log_every": 1000, "tensorboard": False},
        "out_dir": str(out_dir),
        "name": f"{model}-{method}-s{seed}",
    }
    method_keys = ["method.name=normal"] if method == "plain" else ["method.name=tract", "method.l=0.1"]
    return config_from_dict(apply_overrides(base, method_keys))


def demo_section(*, seeds=1, root, echo: Callable[[str], None] = print, epochs: int = 6, n: int = 300,
                 steps: int = 20) -> str:
    """``tractable demo`` section: dit_tiny_2 plain vs TrAct on digits, FID proxy of DDIM samples (≤ ~40 s; one
    seed whatever ``seeds`` says — the study in docs/diffusion.md has the seeds and intervals)."""
    from tractable.experiments.diffusion.commands import fid_over_checkpoints
    from tractable.train import train

    root = Path(root) / "diffusion"
    t0 = time.time()
    runs = [train(_demo_config("dit_tiny_2", method, 0, root, epochs=epochs, lr=2e-3)).run_dir
            for method in METHODS]
    res = fid_over_checkpoints(runs, n=n, steps=steps, out=root / "fid", echo=lambda s: None)
    fids = {e["label"]: e["fid"][-1] for e in res["runs"].values()}
    md = ("### Diffusion: TrAct on a DiT's patch embedding\n\n"
          f"dit_tiny_2 on digits (unconditional, x₀-prediction, cosine schedule, Min-SNR-5, AdamW 2e-3, "
          f"{_steps(runs[0])} steps, seed 0); FID of {n} DDIM-{steps} samples (EMA weights) against the training "
          "images in the feature space of a digits classifier — an offline proxy, not comparable to Inception-FID; "
          "lower is better.\n\n"
          "| method | FID proxy |\n|---|---|\n"
          f"| plain | {fids['dit_tiny_2 normal']:.2f} |\n| TrAct λ=0.1 | {fids['dit_tiny_2 tract']:.2f} |\n\n"
          f"One seed and a very short budget ({time.time() - t0:.0f} s): docs/diffusion.md has the study with "
          "paired seeds and intervals.\n")
    echo(md)
    return md


def _steps(run_dir: Path) -> int:
    return json.loads((Path(run_dir) / "summary.json").read_text())["steps"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n"
                                       "  python -m tractable.experiments.diffusion.study runs/diffusion-study\n"
                                       "  python -m tractable.experiments.diffusion.study runs/ds --scale full "
                                       "--device cuda")
    p.add_argument("out_dir")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                   help="cpu: ≈ 20-25 CPU-minutes at one thread (default); full: the GPU version")
    p.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["adamw", "sgd"])
    p.add_argument("--seeds", type=int, default=None, help="paired seeds per arm (default: the scale's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the finished runs")
    a = p.parse_args(argv)
    if a.seeds is not None and a.seeds < 1:
        p.error(f"--seeds: must be >= 1, got {a.seeds}")
    if a.report:
        report(a.out_dir)
        return 0
    run_study(a.out_dir, scale=a.scale, arms=a.arms, seeds=a.seeds, device=a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

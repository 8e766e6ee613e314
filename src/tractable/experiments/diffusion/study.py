"""The small diffusion study (docs/diffusion.md) and the ``tractable demo`` diffusion section.

Setting: scikit-learn's 8×8 *digits* (1 437 training images, standardised), unconditional x₀-prediction with the
cosine schedule (T = 1000) and Min-SNR-5 weighting — open-TrAct's FFHQ recipe at toy scale — on the three model
kinds: ``dit_tiny_2`` (2×2 patch embedding), ``mdit_tiny`` (1×1 patches) and ``unet_tiny`` (3×3 first conv); plain
backprop vs TrAct (λ = 0.1) on the first layer; AdamW, batch 64, EMA 0.99; checkpoints every few epochs; FID of
DDIM samples against the training images in the feature space of a classifier trained on digits (offline, a
relative measure — **not** comparable to Inception-FID numbers).

Run: ``python -m tractable.experiments.diffusion.study OUT_DIR [--seeds 0 1] [--epochs 40]``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

MODELS = ("dit_tiny_2", "mdit_tiny", "unet_tiny")
METHODS = {"plain": ["method.name=normal"], "tract": ["method.name=tract", "method.l=0.1"]}


def study_config(model: str, method: str, seed: int, out_dir: Path, *, epochs: int, save_every: int,
                 lr: float = 1e-3, extra: Sequence[str] = ()):
    from tractable.train.config import apply_overrides, config_from_dict

    base = {
        "task": "diffusion",
        "task_kwargs": {"prediction": "x0", "schedule": "cosine", "weighting": "min_snr", "gamma": 5.0},
        "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 512},
        "model": {"name": model},
        "optim": {"name": "adamw", "lr": lr, "weight_decay": 0.0},
        "train": {"epochs": epochs, "seed": seed, "device": "cpu", "ema": 0.99, "progress": False, "plots": False,
                  "save_every": save_every, "keep_checkpoints": 1000, "log_every": 1000, "tensorboard": False},
        "out_dir": str(out_dir),
        "name": f"{model}-{method}-s{seed}",
    }
    return config_from_dict(apply_overrides(base, [*METHODS[method], *extra]))


def train_all(out_dir: Path, *, models=MODELS, seeds=(0, 1), epochs: int = 40, save_every: int = 8,
              echo: Callable[[str], None] = print) -> List[Path]:
    from tractable.train import train

    runs = []
    for seed in seeds:
        for model in models:
            for method in METHODS:
                cfg = study_config(model, method, seed, out_dir, epochs=epochs, save_every=save_every)
                run_dir = out_dir / cfg.name
                if (run_dir / "summary.json").is_file():
                    runs.append(run_dir)
                    continue
                if run_dir.exists():  # an interrupted run: continue it
                    cfg.resume = True
                t0 = time.time()
                res = train(cfg)
                echo(f"{cfg.name}: test loss {res.summary.get('final_test_loss', float('nan')):.4f} "
                     f"({time.time() - t0:.0f} s)")
                runs.append(res.run_dir)
    return runs


def run_study(out_dir, *, seeds=(0, 1), epochs: int = 40, save_every: int = 8, n: int = 500, steps: int = 25,
              echo: Callable[[str], None] = print) -> Dict[str, object]:
    from tractable.experiments.diffusion.commands import fid_over_checkpoints, load_run, sample, save_grid

    out_dir = Path(out_dir)
    runs = train_all(out_dir, seeds=seeds, epochs=epochs, save_every=save_every, echo=echo)
    fid_dir = out_dir / ("fid-s" + "-".join(map(str, seeds)))
    results = fid_over_checkpoints(runs, n=n, steps=steps, out=fid_dir, echo=echo)
    for run in runs:
        if run.name.endswith("-s0"):
            model, diffusion, info, _ = load_run(run)
            save_grid(sample(model, diffusion, info, 64, steps=50, seed=0), info, out_dir / "grids" / f"{run.name}.png")
    return results


# -- the demo section --------------------------------------------------------------------------------------
def demo_section(*, seeds=1, root, echo: Callable[[str], None] = print, epochs: int = 6, n: int = 300,
                 steps: int = 20) -> str:
    """``tractable demo`` section: dit_tiny_2 plain vs TrAct on digits, FID proxy of DDIM samples (≤ ~40 s; one
    seed whatever ``seeds`` says — the study in docs/diffusion.md has the seeds and error bars)."""
    from tractable.experiments.diffusion.commands import fid_over_checkpoints
    from tractable.train import train

    root = Path(root) / "diffusion"
    t0 = time.time()
    runs = [train(study_config("dit_tiny_2", method, 0, root, epochs=epochs, save_every=0, lr=2e-3)).run_dir
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
          f"One seed and a very short budget ({time.time() - t0:.0f} s): docs/diffusion.md has the study over seeds "
          "and models.\n")
    echo(md)
    return md


def merge(out_dir) -> Dict[str, object]:
    """Combine the ``fid-s*/fid.json`` of per-seed study processes into ``fid/`` (JSON, table, plot)."""
    from tractable.experiments.diffusion.commands import fid_table, plot_fid

    out_dir = Path(out_dir)
    merged: Dict[str, object] = {}
    for path in sorted(out_dir.glob("fid-s*/fid.json")):
        r = json.loads(path.read_text())
        if not merged:
            merged = {k: v for k, v in r.items() if k != "runs"}
            merged["runs"] = {}
        merged["runs"].update(r["runs"])
    if not merged:
        raise FileNotFoundError(f"no fid-s*/fid.json under {out_dir}")
    (out_dir / "fid").mkdir(exist_ok=True)
    (out_dir / "fid" / "fid.json").write_text(json.dumps(merged, indent=2) + "\n")
    (out_dir / "fid" / "fid.md").write_text(fid_table(merged))
    plot_fid(merged, out_dir / "fid" / "fid.png")
    print(fid_table(merged))
    return merged


def _steps(run_dir: Path) -> int:
    return json.loads((Path(run_dir) / "summary.json").read_text())["steps"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--save-every", type=int, default=8)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--merge", action="store_true", help="only combine the per-seed fid-s*/ results")
    a = p.parse_args(argv)
    if a.merge:
        merge(a.out_dir)
        return 0
    run_study(a.out_dir, seeds=a.seeds, epochs=a.epochs, save_every=a.save_every, n=a.n, steps=a.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

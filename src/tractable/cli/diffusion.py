"""Commands of the diffusion family (diffusion-sample, fid): argument parsing only; the work is in
:mod:`tractable.experiments.diffusion.commands`."""
from __future__ import annotations

import argparse

TRAIN_EXAMPLE = """  tractable train task=diffusion data.name=digits model.name=dit_tiny_2 method.name=tract \\
      optim.name=adamw optim.lr=1e-3 train.epochs=20 train.save_every=2 train.keep_checkpoints=20 name=dit-tract"""

SAMPLE_EXAMPLES = f"""examples:
{TRAIN_EXAMPLE}
  tractable diffusion-sample runs/dit-tract                      # 64 DDIM-50 samples → runs/dit-tract/samples/
  tractable diffusion-sample runs/dit-tract --sampler ddpm --steps 100 --n 100 --step 240 --no-ema
  tractable diffusion-sample runs/dit-cond --guidance 1.5 --device cuda --batch-size 256
"""

FID_EXAMPLES = """examples:
  tractable fid runs/dit-plain runs/dit-tract --n 1000 --out runs/fid-dit     # fid.json, fid.md, fid.png
  tractable fid runs/*-s0 runs/*-s1 --every 2 --features inception           # real FID (torchmetrics + weights)
  tractable fid runs/ffhq-* --features inception --n 50000 --device cuda --batch-size 500   # FID-50k on a GPU
"""


def _check(args) -> None:
    """Argument checks before any work (ValueError: the one-line error naming the argument, rc 2)."""
    for key in ("n", "steps", "batch_size") + (("every",) if hasattr(args, "every") else ()):
        v = getattr(args, key)
        if v < 1:
            raise ValueError(f"--{key.replace('_', '-')}: must be >= 1, got {v}")
    if getattr(args, "n_ref", None) is not None and args.n_ref < 2:
        raise ValueError(f"--n-ref: must be >= 2, got {args.n_ref}")
    if getattr(args, "eta", 0.0) < 0:
        raise ValueError(f"--eta: must be >= 0, got {args.eta}")
    try:
        import torch

        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: {args.device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {args.device!r} asked for, but CUDA is not available here")


def _cmd_sample(args) -> int:
    import sys
    from pathlib import Path

    from tractable.experiments.diffusion.commands import check_guidance, load_run, sample, sample_filename, save_grid
    from tractable.train.outputs import check_output_file

    _check(args)  # every check before any work
    if args.out:  # a file the user names is never replaced
        out = check_output_file(args.out, "diffusion-sample", arg="--out", suffixes=(".png",))
        if out.exists():
            raise FileExistsError(f"diffusion-sample --out: {out} exists; choose another file name (or leave --out "
                                  "out: the default name encodes every option)")
    model, diffusion, info, cfg = load_run(args.run, args.step, ema=not args.no_ema, device=args.device,
                                           echo=lambda s: print(s, file=sys.stderr))
    check_guidance(cfg, model, args.guidance)
    images = sample(model, diffusion, info, args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
                    seed=args.seed, guidance=args.guidance, batch_size=args.batch_size, spacing=args.spacing,
                    device=args.device)
    out = Path(args.out) if args.out else Path(args.run) / "samples" / sample_filename(
        sampler=args.sampler, steps=args.steps, spacing=args.spacing, eta=args.eta, guidance=args.guidance,
        ema=not args.no_ema, step=args.step, seed=args.seed, n=args.n)
    print(save_grid(images, info, out))
    return 0


def _cmd_fid(args) -> int:
    from tractable.experiments.diffusion.commands import fid_over_checkpoints, fid_table

    _check(args)
    results = fid_over_checkpoints(args.runs, n=args.n, steps=args.steps, sampler=args.sampler,
                                   features=args.features, seed=args.seed, ema=not args.no_ema, out=args.out,
                                   every=args.every, device=args.device, batch_size=args.batch_size,
                                   spacing=args.spacing, n_ref=args.n_ref)
    print(fid_table(results))
    print(f"written: {args.out}/fid.json, fid.md, fid.png")
    return 0


SPACINGS = ("trailing", "linspace", "leading")  # tractable.diffusion.SPACINGS, kept here so --help imports no torch


def add_commands(sub) -> None:
    """Add this family's subcommands to the ``tractable`` parser's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("diffusion-sample", help="sample a PNG grid from a task=diffusion run", epilog=SAMPLE_EXAMPLES,
                       formatter_class=fmt,
                       description="Sample images from a diffusion run's checkpoint (EMA weights if it has them) "
                                   "and write them as one PNG grid.")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    s.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM η (default 0: deterministic)")
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (class_cond models)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spacing", choices=list(SPACINGS), default="trailing",
                   help="timestep spacing (default trailing: starts at t = T-1 for every step count)")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    s.add_argument("--device", default="cpu", help="where to sample (cpu, cuda, cuda:1, mps; default cpu)")
    s.add_argument("--batch-size", type=int, default=500, help="samples drawn at once (default 500)")
    s.add_argument("--out", default=None, help="PNG path, must not exist (default RUN_DIR/samples/<a name encoding "
                                               "every sampling option>.png)")
    s.set_defaults(func=_cmd_sample)

    f = sub.add_parser("fid", help="FID over the checkpoints of diffusion runs (JSON, table, plot)", epilog=FID_EXAMPLES,
                       formatter_class=fmt,
                       description="Fréchet distance between generated samples and the training images at every "
                                   "checkpoint of each run; runs of the same model and method are averaged. "
                                   "--features classifier (default, offline) uses a small CNN trained on the same "
                                   "dataset: good for comparing runs, NOT comparable to Inception-FID numbers.")
    f.add_argument("runs", nargs="+", metavar="RUN_DIR")
    f.add_argument("--n", type=int, default=1000, help="samples per checkpoint (default 1000)")
    f.add_argument("--steps", type=int, default=50, help="sampler steps (default 50, as open-TrAct's DDIM-50)")
    f.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    f.add_argument("--features", choices=["classifier", "inception"], default="classifier")
    f.add_argument("--every", type=int, default=1, help="use every k-th checkpoint (the last always)")
    f.add_argument("--seed", type=int, default=0, help="sampling seed (and the feature classifier's)")
    f.add_argument("--spacing", choices=list(SPACINGS), default="trailing", help="timestep spacing (default trailing)")
    f.add_argument("--no-ema", action="store_true")
    f.add_argument("--device", default="cpu", help="where to sample and extract features (default cpu)")
    f.add_argument("--batch-size", type=int, default=500, help="images sampled / featurised at once (default 500)")
    f.add_argument("--n-ref", type=int, default=None,
                   help="reference images: a seeded random subset of the un-augmented training split (default: "
                        "all of an in-memory dataset, 50 000 of a folder dataset)")
    f.add_argument("--out", default="fid", help="output directory (default ./fid)")
    f.set_defaults(func=_cmd_fid)

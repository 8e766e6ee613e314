"""Commands of the diffusion family (diffusion-sample, fid): argument parsing only; the work is in
:mod:`tractable.experiments.diffusion.commands`."""
from __future__ import annotations

import argparse

TRAIN_EXAMPLE = """  tractable train task=diffusion data.name=digits model.name=dit_tiny_2 method.name=tract \\
      optim.name=adamw optim.lr=1e-3 train.epochs=20 train.ema=0.999 train.save_every=2 train.keep_checkpoints=20 \\
      name=dit-tract"""

SAMPLE_EXAMPLES = f"""examples:
{TRAIN_EXAMPLE}
  tractable diffusion-sample runs/dit-tract                      # 64 DDIM-50 samples → runs/dit-tract/samples/
  tractable diffusion-sample runs/dit-tract --sampler ddpm --steps 100 --n 100 --step 240 --no-ema
"""

FID_EXAMPLES = """examples:
  tractable fid runs/dit-plain runs/dit-tract --n 1000 --out runs/fid-dit     # fid.json, fid.md, fid.png
  tractable fid runs/*-s0 runs/*-s1 --every 2 --features inception           # real FID (torchmetrics + weights)
"""


def _cmd_sample(args) -> int:
    from pathlib import Path

    from tractable.experiments.diffusion.commands import load_run, sample, save_grid, sample_file_name
    from tractable.train.loop import resolve_device
    from tractable.train.outputs import check_output_file

    for name, value in (("--n", args.n), ("--steps", args.steps)):  # every check before any work
        if value < 1:
            raise ValueError(f"diffusion-sample {name}: must be >= 1, got {value}")
    resolve_device(args.device, "--device")
    if args.out:  # a file the user names is never replaced
        out = check_output_file(args.out, "diffusion-sample", arg="--out", suffixes=(".png",))
        if out.exists():
            raise FileExistsError(f"diffusion-sample --out: {out} exists; choose another file name (or leave --out "
                                  "out: the default name encodes every option)")
    model, diffusion, info, cfg = load_run(args.run, args.step, ema=not args.no_ema, device=args.device)
    images = sample(model, diffusion, info, args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
                    seed=args.seed, guidance=args.guidance, device=args.device)
    if not args.out:
        out = Path(args.run) / "samples" / sample_file_name(
            sampler=args.sampler, steps=args.steps, step=args.step, seed=args.seed, n=args.n, eta=args.eta,
            guidance=args.guidance, ema=not args.no_ema)
    print(save_grid(images, info, out))
    return 0


def _cmd_fid(args) -> int:
    from tractable.experiments.diffusion.commands import fid_over_checkpoints, fid_table

    results = fid_over_checkpoints(args.runs, n=args.n, steps=args.steps, sampler=args.sampler,
                                   features=args.features, seed=args.seed, ema=not args.no_ema, out=args.out,
                                   every=args.every)
    print(fid_table(results))
    print(f"written: {args.out}/fid.json, fid.md, fid.png")
    return 0


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
    s.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default=None, help="PNG path, must not exist (default RUN_DIR/samples/<name>.png, the "
                                               "name encoding every option: ddim50-eta0-g1-steplast-s0-n64-ema)")
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
    f.add_argument("--no-ema", action="store_true")
    f.add_argument("--out", default="fid", help="output directory (default ./fid)")
    f.set_defaults(func=_cmd_fid)

"""Commands of the feedback family (fa-audit): argument parsing only; the work is in :mod:`tractable.experiments`."""
from __future__ import annotations

import argparse

AUDIT_EXAMPLES = """examples:
  tractable fa-audit --quick                               # minutes on a CPU: bundled digits, small models, offline
  tractable fa-audit --quick --archs resmlp --methods bp dfa_seed dfa_post_ln --no-penalty
  tractable fa-audit --dataset fashion_mnist --archs resmlp --epochs 20 --out runs/fa-fmnist
  tractable fa-audit --dataset cifar10 --data-dir ~/data --download --gpu 0 --out runs/fa-cifar10  # full audit
  tractable fa-audit --out runs/fa-cifar10 ...same flags...  # after an interruption: finishes what is missing

methods: bp, fa_seed (the reference code's block feedback without identity, RMS), fa_block (block FA with the
identity path), fa_layer (layer FA), dfa_seed (RMS-normalised DFA, shared B_0), dfa (true dL/dlogits, no
normalisation), dfa_post_ln (points after a parameter-free LN).  archs: resmlp, resmlp_d512_l2, vit_mini,
resnet, resnet_preact.  Baselines per arch and seed: frozen_seed, frozen_matched (per method), shallow,
head_only.  Outputs: DIR/runs/<id>/ (runner run + result.json with the protocol report, checkpoints with B),
DIR/summary.md, DIR/summary.json, DIR/{cosine,growth,accuracy}.png.
"""


def _floats(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _cmd_audit(args) -> int:
    import time

    from tractable.experiments.feedback.audit import AuditConfig, quick_config, run_audit

    device = args.device
    if args.gpu is not None:
        import torch

        if device not in (None, "auto", "cuda"):
            raise ValueError(f"--gpu {args.gpu} conflicts with --device {device}")
        if not torch.cuda.is_available() or args.gpu >= torch.cuda.device_count():
            raise ValueError(f"--gpu {args.gpu}: no such CUDA device (available: {torch.cuda.device_count()}); "
                             "use --device cpu to run on the CPU")
        device = f"cuda:{args.gpu}"
    if device not in (None, "auto"):  # a device that is not here: an error before any work
        from tractable.train.loop import resolve_device

        resolve_device(device, "--device")
    out = args.out or f"runs/fa-audit-{time.strftime('%Y%m%d-%H%M%S')}"
    given = {k: v for k, v in {
        "dataset": args.dataset, "data_root": args.data_dir, "archs": args.archs, "methods": args.methods,
        "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "augment": args.augment, "subset": args.subset,
        "test_subset": args.test_subset, "penalty_arch": args.penalty_arch, "penalty_method": args.penalty_method,
        "penalty_lambdas": args.lambdas, "penalty_epochs": args.penalty_epochs, "null_redraws": args.null_redraws,
        "device": device, "diag_samples": args.diag_samples,
    }.items() if v is not None}
    if args.download:
        given["download"] = True
    if args.no_baselines:
        given["baselines"] = False
    if args.no_penalty:
        given["penalty"] = False
    if args.methods is not None:
        given["strict_methods"] = True
    cfg = quick_config(out, **given) if args.quick else AuditConfig(out=out, **given)
    summary = run_audit(cfg)
    if not args.quiet:
        print(summary["markdown"])
    return 0


def add_commands(sub) -> None:
    """Add this family's subcommands to the ``tractable`` parser's subparsers."""
    a = sub.add_parser(
        "fa-audit", help="the FA evaluation protocol's whole audit (methods x archs x seeds, baselines, penalty, null)",
        description="Train BP and the credit-assignment methods (seed-compatible and corrected) on every architecture "
                    "and seed (42, 123, 456), with frozen / method-matched frozen / shallow / head-only baselines, "
                    "the penalty sweep and a fresh-B null; measure every run with the three-diagnostic protocol "
                    "(seed and corrected definitions, both verdict rules) and write one summary table and plots. "
                    "Resumable: finished runs are never redone. Defaults follow the reference recipe (AdamW 1e-3, "
                    "wd 0.01, cosine, batch 128; 100 epochs, ViT 60; penalty 30).",
        epilog=AUDIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--quick", action="store_true",
                   help="minutes-long CPU version: digits (bundled), small models, 3 epochs, all seeds and baselines")
    a.add_argument("--out", default=None, metavar="DIR",
                   help="audit directory (default: a new runs/fa-audit-<time>); reuse it to resume")
    a.add_argument("--dataset", default=None, help="registered dataset (default cifar10; --quick: digits)")
    a.add_argument("--data-dir", default=None, help="dataset root (see `tractable list datasets`)")
    a.add_argument("--download", action="store_true", help="download a missing dataset (CIFAR, MNIST, ...)")
    a.add_argument("--archs", nargs="+", default=None, metavar="ARCH", help="default: resmlp vit_mini resnet")
    a.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="default: every method whose runner rule exists (named here: all must exist)")
    a.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 42 123 456")
    a.add_argument("--epochs", type=int, default=None, help="epochs of every method/baseline run")
    a.add_argument("--batch-size", type=int, default=None)
    a.add_argument("--lr", type=_floats, default=None)
    a.add_argument("--weight-decay", type=_floats, default=None)
    a.add_argument("--augment", choices=["none", "crop_flip", "flip", "crop"], default=None,
                   help="default: crop_flip on CIFAR (the reference recipe), none otherwise")
    a.add_argument("--subset", type=int, default=None, help="first N training samples")
    a.add_argument("--test-subset", type=int, default=None, help="first N test samples")
    a.add_argument("--no-baselines", action="store_true", help="skip the frozen/shallow/head-only baselines")
    a.add_argument("--no-penalty", action="store_true", help="skip the penalty sweep and the fresh-B null")
    a.add_argument("--penalty-arch", default=None, help="default resmlp")
    a.add_argument("--penalty-method", default=None, help="default dfa_seed")
    a.add_argument("--lambdas", nargs="+", type=_floats, default=None, help="default 0 1e-4 1e-2")
    a.add_argument("--penalty-epochs", type=int, default=None, help="default 30 (--quick: 3)")
    a.add_argument("--null-redraws", type=int, default=None, help="fresh-B redraws per penalty run (default 20)")
    a.add_argument("--diag-samples", type=int, default=None, help="test inputs for corrected D1/D2 (default 1024)")
    a.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    a.add_argument("--gpu", type=int, default=None, help="CUDA device index (an error if it does not exist)")
    a.add_argument("--quiet", action="store_true", help="do not print the summary table")
    a.set_defaults(func=_cmd_audit)

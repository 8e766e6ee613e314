"""Commands of the feedback family (fa-audit, fa-benchmark): argument parsing only; the work is in
:mod:`tractable.experiments.feedback`."""
from __future__ import annotations

import argparse
import dataclasses

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


BENCH_EXAMPLES = """examples:
  tractable fa-benchmark --quick --out runs/fa-bench        # CPU budget: LeNet/Fashion-MNIST 10k images x 6 epochs,
                                                            # MNIST-1D x 20 epochs; 7 rules x 3 seeds (8.4 CPU-min measured)
  tractable fa-benchmark --out runs/fa-bench-full --device cuda   # the published recipe: 100 epochs, all 60k images
  tractable fa-benchmark --quick --datasets mnist1d --rules bp fa dfa --seeds 0 1 2 3 4 --out runs/fa-1d
  tractable fa-benchmark --out runs/fa-bench ...same flags...     # after an interruption: finishes what is missing

rules: bp, fa, usf, brsf, frsf, dfa, kp (tractable.feedback.convert's defaults).  datasets: fashion_mnist (lenet,
needs the dataset installed: apt-get install dataset-fashion-mnist, or --data-dir), mnist1d (cnn1d, generated).
Outputs: DIR/runs/<dataset>-<rule>-s<seed>/ (runner run + result.json), DIR/summary.md, DIR/summary.json,
DIR/alignment_<dataset>.png.
"""


def _cmd_benchmark(args) -> int:
    import time

    from tractable.experiments.feedback.benchmark import BenchmarkConfig, quick_config, run_benchmark

    out = args.out or f"runs/fa-benchmark-{time.strftime('%Y%m%d-%H%M%S')}"
    given = {k: v for k, v in {"datasets": args.datasets, "rules": args.rules, "seeds": args.seeds,
                               "data_root": args.data_dir, "device": args.device,
                               "align_every": args.align_every}.items() if v is not None}
    base = quick_config(out) if args.quick else BenchmarkConfig(out=out)
    datasets = given.get("datasets", base.datasets)
    if args.epochs is not None:
        given["epochs"] = {d: args.epochs for d in datasets}
    else:
        given["epochs"] = {d: base.epochs.get(d, 100) for d in datasets}
    if args.subset is not None:
        given["subset"] = {d: args.subset for d in datasets}
    cfg = dataclasses.replace(base, **given)
    cfg.validate()
    summary = run_benchmark(cfg)
    if not args.quiet:
        print(summary["markdown"])
    return 0


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
                   help="minutes-long CPU version: digits (bundled), small ResMLP and ViT-mini, 3 epochs, all seeds and "
                        "baselines (ResNet left out: at this budget even BP stays near chance; --archs brings it back)")
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

    b = sub.add_parser(
        "fa-benchmark", help="the public FA benchmark (LeNet / Fashion-MNIST, Sanfiz & Akrout 2021) and MNIST-1D",
        description="Train BP, FA, uSF, brSF, frSF, DFA and KP with tractable.feedback.convert's defaults on the "
                    "published recipe (SGD momentum 0.9, lr 0.01, weight decay 1e-3, batch 64; lr /10 at 50 %% and "
                    "75 %% of the schedule), paired seeds, and print our test error next to the published one with "
                    "paired differences to BP (95 %% t-intervals). Logs and plots each rule's alignment with BP over "
                    "training. Resumable: finished runs are never redone.",
        epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--quick", action="store_true",
                   help="CPU budget: Fashion-MNIST first 10,000 images for 6 epochs, MNIST-1D 20 epochs")
    b.add_argument("--out", default=None, metavar="DIR",
                   help="benchmark directory (default: a new runs/fa-benchmark-<time>); reuse it to resume")
    b.add_argument("--datasets", nargs="+", default=None, choices=["fashion_mnist", "mnist1d"],
                   help="default: fashion_mnist mnist1d")
    b.add_argument("--rules", nargs="+", default=None, choices=["bp", "fa", "usf", "brsf", "frsf", "dfa", "kp"],
                   help="default: all seven")
    b.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2")
    b.add_argument("--epochs", type=int, default=None, help="epochs for every dataset (default 100; --quick: 6 / 20)")
    b.add_argument("--subset", type=int, default=None, help="first N training images of every dataset")
    b.add_argument("--align-every", type=int, default=None, help="alignment logging period in steps (default 50)")
    b.add_argument("--data-dir", default=None, help="dataset root (see `tractable list datasets`)")
    b.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    b.add_argument("--quiet", action="store_true", help="do not print the summary table")
    b.set_defaults(func=_cmd_benchmark)

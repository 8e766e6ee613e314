"""Commands of the subspace family (subspace-eval, ensemble-eval): argument parsing only; the work is in
:mod:`tractable.experiments.subspace.evaluate`."""
from __future__ import annotations

import argparse

EVAL_EXAMPLES = """examples:
  tractable train --preset smoke method.name=subspace method.kind=line name=line
  tractable subspace-eval runs/line                       # α grid (step 0.05), BN recomputed per point
  tractable subspace-eval runs/line --standard runs/std --ensemble runs/std runs/std2 --bn-batches 20
  tractable ensemble-eval runs/std runs/std2 --out runs/ens2 && tractable compare runs/line runs/std runs/ens2
"""


def _cmd_eval(args) -> int:
    from tractable.experiments.subspace.evaluate import evaluate_run

    evaluate_run(args.run, step=args.step, bn_batches=args.bn_batches, device=args.device, standard=args.standard,
                 ensemble=args.ensemble, heatmap_step=args.heatmap_step, ensemble_size=args.ensemble_size,
                 plot=not args.no_plot, data_root=args.data_dir)
    return 0


def _cmd_ensemble(args) -> int:
    from tractable.experiments.subspace.evaluate import ensemble_eval

    ensemble_eval(args.runs, args.out, device=args.device, combine=args.combine, data_root=args.data_dir)
    return 0


def add_commands(sub) -> None:
    """Add this family's subcommands to the ``tractable`` parser's subparsers."""
    e = sub.add_parser("subspace-eval", help="evaluate a run on the α grid / simplex with per-point BatchNorm",
                       description="Evaluate a finished run as in the subspace paper: accuracy, NLL and ECE (20 bins) "
                                   "on the α grid with BatchNorm statistics recomputed for every point, ensembles of "
                                   "α and 1−α, the endpoints and the midpoint; writes RUN/subspace_eval.json and "
                                   "RUN/plots/subspace_*.png. A non-subspace run gets its plain metrics.",
                       epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", metavar="RUN", help="run directory (config.yaml + checkpoints/)")
    e.add_argument("--step", type=float, default=0.05, help="α grid step (default 0.05: 21 points)")
    e.add_argument("--bn-batches", type=int, default=None,
                   help="training batches per BatchNorm recompute (default: the whole training set)")
    e.add_argument("--standard", nargs="+", default=[], metavar="RUN", help="standard-training run(s): reference line")
    e.add_argument("--ensemble", nargs="+", default=[], metavar="RUN",
                   help="independently trained runs whose logit ensemble is a reference line")
    e.add_argument("--heatmap-step", type=float, default=0.1, help="barycentric grid step of the k=3 heat-map")
    e.add_argument("--ensemble-size", type=int, default=0, help="simplex: ensemble of this many random points")
    e.add_argument("--device", default="cpu")
    e.add_argument("--data-dir", default=None, help="dataset root (default: the run's data.root)")
    e.add_argument("--no-plot", action="store_true")
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("ensemble-eval", help="logit ensemble of independently trained runs, as a run for compare",
                       description="Evaluate the ensemble of two or more independently trained runs (logits averaged) "
                                   "and write it as a run directory (metrics.jsonl, summary.json, config.yaml) that "
                                   "`tractable compare` shows next to the runs.",
                       epilog="example:\n  tractable ensemble-eval runs/std-s0 runs/std-s1 --out runs/ens-s01",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("runs", nargs="+", metavar="RUN")
    s.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    s.add_argument("--combine", choices=["logits", "probs"], default="logits")
    s.add_argument("--device", default="cpu")
    s.add_argument("--data-dir", default=None)
    s.set_defaults(func=_cmd_ensemble)

"""Commands of the TrAct family (tract-study): argument parsing only; the work is in
:mod:`tractable.experiments.tract.study`."""
from __future__ import annotations

import argparse

STUDY_EXAMPLES = """examples:
  tractable tract-study --out runs/tract-study                    # the documented run, ~20 CPU-minutes
  tractable tract-study --out runs/tract-study --report           # tables from the seeds finished so far
  tractable tract-study --out runs/tract-vit --models vit --optims adam --seeds 10
  tractable tract-study --out runs/tract-full --full --device cuda # all 60,000 images, 30 epochs
"""


def _cmd_study(args) -> int:
    from pathlib import Path

    from tractable.experiments.tract.study import protocol_from_args, run

    run(Path(args.out), protocol_from_args(args), device=args.device, plot=not args.no_plot, report_only=args.report)
    return 0


def add_commands(sub) -> None:
    """Add this family's subcommands to the ``tractable`` parser's subparsers."""
    from tractable.experiments.tract.study import add_arguments

    s = sub.add_parser("tract-study", help="TrAct vs plain on Fashion-MNIST: ViT and ResNet, SGD and Adam, paired seeds",
                       description="The TrAct paper's 'fewer epochs' claim at CPU scale: a patch-4 ViT and a small "
                                   "ResNet on Fashion-MNIST, SGD+cosine and Adam+cosine, the baseline's lr and λ "
                                   "chosen on one seed, then plain / λ=0.1 / best λ on paired seeds. Writes "
                                   "OUT/results.{json,md}, OUT/curves.png, OUT/differences.png; re-running "
                                   "completes an interrupted study.",
                       epilog=STUDY_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(s)
    s.set_defaults(func=_cmd_study)

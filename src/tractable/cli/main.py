"""``tractable`` console script: parse arguments and hand over to :mod:`tractable.experiments` / :mod:`tractable.train`.

Commands: ``demo`` (the main job), ``train`` (any config or preset; also under ``torchrun``), ``tract-cifar``
(the official TrAct recipe's flags), ``compare`` (side-by-side table and plot of runs), ``plot`` (a run's
curves), ``list`` (models, datasets, presets, rules).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import List, Optional


#: modules with ``add_commands(subparsers)`` adding a method family's commands (one module per family)
COMMAND_MODULES = ("tractable.cli.feedback", "tractable.cli.subspace", "tractable.cli.crate",
                   "tractable.cli.diffusion", "tractable.cli.tract")


def _cmd_demo(args) -> int:
    from tractable.experiments.demo import run_demo

    run_demo(seeds=args.seeds, epochs=args.epochs, out_dir=args.out_dir, plot=not args.no_plot,
             extra=args.overrides)
    return 0


def _cmd_train(args) -> int:
    from tractable.train import load_config, train

    if args.config is not None and "=" in args.config:  # no config file: the first word was an override
        args.overrides = [args.config, *args.overrides]
        args.config = None
    if args.preset and args.config:
        raise ValueError("train: give either a config file or --preset, not both")
    if args.preset:
        from tractable.experiments.presets import preset_config

        cfg = preset_config(args.preset, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **result.summary}, indent=2, default=str))
    return 0


def _cmd_tract_cifar(args) -> int:
    from tractable.experiments.tract.cifar import run

    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        s = result.summary
        print(f"run directory: {result.run_dir}")
        print(json.dumps({k: s[k] for k in s if not isinstance(s[k], list)}, indent=2, default=str))
    return 0


def _cmd_compare(args) -> int:
    from tractable.train import compare_runs, plot_compare
    from tractable.train.outputs import check_output_file

    if not args.no_plot:
        check_output_file(args.plot, "compare", arg="--plot", suffixes=(".png", ".pdf", ".svg"))
    print(compare_runs(args.runs))
    if not args.no_plot:
        path = plot_compare(args.runs, args.plot)
        print(f"plot: {path}")
    return 0


def _cmd_plot(args) -> int:
    from tractable.train import plot_run

    for p in plot_run(args.run):
        print(p)
    return 0


def _cmd_list(args) -> int:
    if args.what == "models":
        from tractable.models import list_models as f
    elif args.what == "datasets":
        from tractable.data import list_datasets as f
    elif args.what == "presets":
        from tractable.experiments.presets import list_presets as f
    else:
        from tractable.train.rules import describe_rules as f
    print("\n".join(f()))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tractable", description="Learning-rule research in PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job: every learning rule on digits, several seeds, one table",
                       description="Train every learning rule (backprop, TrAct, FA, DFA) on scikit-learn's digits "
                                   "for several seeds and print one table with paired differences, then the "
                                   "subspace, CRATE and diffusion sections. Offline, CPU.",
                       epilog="example:\n  tractable demo --seeds 3 --epochs 4 --out-dir runs/demo-quick",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--seeds", type=_positive_int, default=10,
                   help="seeds per row, 0 … N−1 (default 10; paired differences need >= 2)")
    d.add_argument("--epochs", type=_positive_int, default=6, help="epochs of every run (default 6)")
    d.add_argument("--out-dir", default="runs", help="parent directory of the demo's run directories")
    d.add_argument("--no-plot", action="store_true")
    d.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides applied to every row")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train from a YAML config or a preset, with key=value overrides",
                       description="Train from a YAML config (or --preset) plus key=value overrides, e.g. "
                                   "`tractable train --preset smoke optim.lr=0.1 name=try1`. TrAct stacks with "
                                   "another rule: `method.name=tract+fa method.tract.l=0.1` (each rule's options "
                                   "as method.<rule>.<option>; `tractable list rules`). Under torchrun "
                                   "(`torchrun --nproc_per_node 2 -m tractable train ...`) it runs DDP.")
    t.add_argument("config", nargs="?", default=None, help="YAML config file")
    t.add_argument("--preset", default=None, help="a named preset (see `tractable list presets`)")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.set_defaults(func=_cmd_train)

    from tractable.experiments.tract.cifar import __doc__ as tc_doc, add_arguments

    c = sub.add_parser("tract-cifar", help="the official TrAct CIFAR recipe (train_cifar.py flags)",
                       description=tc_doc.split("\n\n")[0])
    add_arguments(c)
    c.set_defaults(func=_cmd_tract_cifar)

    cmp_ = sub.add_parser("compare", help="side-by-side table and one plot of several runs")
    cmp_.add_argument("runs", nargs="+", metavar="RUN_DIR")
    cmp_.add_argument("--plot", default="compare.png", help="where to write the plot (default compare.png)")
    cmp_.add_argument("--no-plot", action="store_true")
    cmp_.set_defaults(func=_cmd_compare)

    pl = sub.add_parser("plot", help="draw a run's curves into RUN_DIR/plots/")
    pl.add_argument("run", metavar="RUN_DIR")
    pl.set_defaults(func=_cmd_plot)

    ls = sub.add_parser("list", help="list models, datasets, presets or learning rules")
    ls.add_argument("what", choices=["models", "datasets", "presets", "rules"])
    ls.set_defaults(func=_cmd_list)

    for name in COMMAND_MODULES:  # each family's commands (fa-audit, subspace-eval, crate-measure, ...)
        importlib.import_module(name).add_commands(sub)
    for sp in sub.choices.values():  # an unknown option is reported with the subcommand's own usage
        sp.set_defaults(_parser=sp)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    # `train` and `tract-cifar` take config overrides as positionals; reject stray words early
    for item in getattr(args, "overrides", []) or []:
        if "=" not in item:
            parser.error(f"unexpected argument {item!r}: overrides look like key=value (e.g. optim.lr=0.1)")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, KeyError, OSError) as e:
        if os.environ.get("TRACTABLE_DEBUG"):
            raise
        text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())  # one line
        print(f"tractable {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """Console-script entry point: ``main()``, and under ``torchrun`` a successful run ends without the
    interpreter teardown (see :func:`tractable.train.skip_interpreter_teardown`)."""
    from tractable.train.distributed import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()

"""The papers' recipes as functions over the runner (:mod:`tractable.train`); no new maths here."""
from tractable.experiments.demo import ROWS, DemoRow, run_demo
from tractable.experiments.presets import list_presets, preset_config
from tractable.experiments.tract.cifar import METHODS, OPTIMS, config_from_args

__all__ = ["ROWS", "DemoRow", "run_demo", "list_presets", "preset_config", "METHODS", "OPTIMS", "config_from_args"]

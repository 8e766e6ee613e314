"""Commands of the crate family (crate-measure, crate-attention): argument parsing only; the work is in :mod:`tractable.experiments`."""
from __future__ import annotations


def add_commands(sub) -> None:
    """Add this family's subcommands to the ``tractable`` parser's subparsers."""

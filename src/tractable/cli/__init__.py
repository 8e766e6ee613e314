"""Command line: argument parsing that dispatches to :mod:`tractable.experiments`; nothing else."""

"""Where datasets live on disk, and the error raised when they are not there.

The data root is, in order: the ``root`` argument, the ``TRACTABLE_DATA`` environment variable,
``~/.cache/tractable/data``. Readers look in a few fixed sub-folders of it (see each reader) and, when nothing
is found, raise :class:`DatasetNotFoundError` (a ``FileNotFoundError``) that lists where they looked, the
exact files expected, and how to get them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

ENV_VAR = "TRACTABLE_DATA"

PathLike = Union[str, "os.PathLike[str]"]


def default_root() -> Path:
    """``$TRACTABLE_DATA`` if set and non-empty, else ``~/.cache/tractable/data``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tractable" / "data"


def resolve_root(root: Optional[PathLike]) -> Path:
    """``root`` as a ``Path`` (user-expanded), or :func:`default_root` when ``None``."""
    return default_root() if root is None else Path(root).expanduser()


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where we looked and how to fix it."""


def missing_data_error(
    dataset: str,
    looked_in: Iterable[Path],
    expected: Iterable[str],
    *,
    can_download: bool = True,
    hint: str = "",
) -> DatasetNotFoundError:
    """Build (not raise) the error for a dataset whose files are absent."""
    dirs = "\n".join(f"  - {p}" for p in looked_in)
    files = "\n".join(f"  - {f}" for f in expected)
    if can_download:
        how = (
            f"Pass download=True (tractable train / the runner config: data.download=true) to fetch the official "
            f"files into the data root, "
            f"or place them there yourself; set {ENV_VAR} (or pass root=...) to point at another data root."
        )
    else:
        how = (
            f"This dataset cannot be downloaded automatically; place the files yourself and set {ENV_VAR} "
            f"(or pass root=...) to the folder that holds them."
        )
    msg = f"{dataset} not found.\nLooked in:\n{dirs}\nExpected:\n{files}\n{how}"
    if hint:
        msg += f"\n{hint}"
    return DatasetNotFoundError(msg)

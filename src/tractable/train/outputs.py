"""Where commands write: a user's results are never replaced, mixed with another command's, or shrunk.

Every command that writes results into a directory goes through :func:`check_output_dir` (during its argument
checks, before any work) and :func:`claim_output_dir` (when it writes):

* a directory that does not exist or is empty is fine; it is created and gets a small marker file
  ``.tractable-output.json`` naming the command that owns it;
* a directory holding the results of the *same* command (its marker) is reused — the command writes its
  outputs under names that encode the options that change them (:func:`option_slug`), and a summary is merged
  with the one already there, never shrunk (:func:`merge_summary`);
* a directory holding another command's results — a training run (``config.yaml`` with ``metrics.jsonl``,
  ``checkpoints/`` or ``summary.json``), another command's marker, or files of unknown origin — is refused with
  a one-line :class:`FileExistsError` naming the directory, what it holds and what to do.

Commands that write *inside* a run directory (``diffusion-sample``, ``subspace-eval``, ``crate-measure`` by
default) use their own sub-folder of it, named after the command, which the same rules protect.

:func:`check_output_file` is the same check for a single output file (a plot path): it must have one of the
expected suffixes and may not be an existing file of another kind.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

__all__ = ["MARKER", "output_owner", "check_output_dir", "claim_output_dir", "check_output_file", "option_slug",
           "merge_summary"]

PathLike = Union[str, Path]
#: the file that says which command's results a directory holds
MARKER = ".tractable-output.json"
_RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints")


def output_owner(path: PathLike, command: Optional[str] = None, own: Sequence[str] = ()) -> Optional[str]:
    """The command whose results ``path`` holds: its marker's command, ``"train"`` for a training run directory,
    ``""`` for a non-empty directory of unknown origin, ``None`` for a missing or empty directory. A directory
    without a marker that has one of the files ``own`` (written by ``command`` before it wrote markers) is
    ``command``'s."""
    path = Path(path)
    if not path.is_dir():
        return None
    marker = path / MARKER
    if marker.is_file():
        try:
            command = json.loads(marker.read_text()).get("command")
        except (ValueError, OSError, AttributeError):
            command = None
        if isinstance(command, str) and command:
            return command
    if (path / "config.yaml").is_file() and any((path / f).exists() for f in _RUN_FILES):
        return "train"
    if command is not None and any((path / f).exists() for f in own):
        return command
    if any(p.name != MARKER for p in path.iterdir()):
        return ""
    return None


def check_output_dir(path: PathLike, command: str, *, arg: str = "--out", own: Sequence[str] = ()) -> Path:
    """Raise a one-line ``FileExistsError`` unless ``path`` is a new/empty directory or holds ``command``'s own
    results (nothing is written). Returns ``Path(path)``. ``own``: see :func:`output_owner`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{command} {arg}: {path} exists and is not a directory; choose a directory")
    owner = output_owner(path, command, own)
    if owner is None or owner == command:
        return path
    if owner == "train":
        what = "a training run of `tractable train` (config.yaml, metrics, checkpoints)"
    elif owner:
        what = f"the results of `tractable {owner}`"
    else:
        what = "files that are not results of `tractable " + command + "`"
    raise FileExistsError(f"{command} {arg}: {path} holds {what}; they are never mixed or replaced — choose a new "
                          f"or empty directory (or an earlier output directory of {command})")


def claim_output_dir(path: PathLike, command: str, *, arg: str = "--out", own: Sequence[str] = ()) -> Path:
    """:func:`check_output_dir`, then create ``path`` and write its marker (if new). Returns ``Path(path)``."""
    path = check_output_dir(path, command, arg=arg, own=own)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"command": command}) + "\n")
    return path


def check_output_file(path: PathLike, command: str, *, arg: str, suffixes: Sequence[str]) -> Path:
    """An output file path: its suffix is one of ``suffixes`` and it is not a directory (one-line errors)."""
    path = Path(path)
    if path.suffix.lower() not in {s.lower() for s in suffixes}:
        raise ValueError(f"{command} {arg}: {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise FileExistsError(f"{command} {arg}: {path} is a directory; give a file name ending in "
                              f"{' or '.join(suffixes)}")
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def option_slug(options: Mapping[str, Any], *, hashed: Iterable[str] = ()) -> str:
    """A file-name-safe ASCII name for a set of options, e.g. ``ddim50-eta0-g1-n64``: ``key`` + value for each
    option that is not ``None``, in the given order; options in ``hashed`` (long lists such as image paths) are
    summarised by an 8-character hash, so two different sets of options never share a name."""
    hashed = set(hashed)
    parts = []
    digest = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in hashed:
            digest[key] = value
            continue
        parts.append(f"{key}{_fmt(value)}")
    if digest:
        text = json.dumps(digest, sort_keys=True, default=str)
        parts.append(hashlib.sha1(text.encode()).hexdigest()[:8])
    slug = "-".join(parts)
    slug = re.sub(r"[^A-Za-z0-9._,=+-]+", "_", slug)
    return slug or "default"


def merge_summary(old: Optional[Dict[str, Any]], new: Dict[str, Any], *, key: str = "runs",
                  id_field: str = "id") -> Dict[str, Any]:
    """A re-run's summary never shrinks: entries of ``old[key]`` (a list of dicts identified by ``id_field``)
    that ``new`` does not have are kept, ``new``'s entries replace those with the same id; every other key is
    ``new``'s."""
    if not old or not isinstance(old.get(key), list):
        return new
    merged = {e.get(id_field): e for e in old[key] if isinstance(e, dict)}
    for e in new.get(key, []):
        merged[e.get(id_field)] = e
    return {**new, key: list(merged.values())}

"""Reading weight files with one-line errors: ``.safetensors`` and ``torch.save`` files (``weights_only=True``).

Every command that reads a checkpoint goes through :func:`load_safetensors` or :func:`load_torch_file`, so a
damaged, truncated or wrong file is a :class:`CheckpointFileError` (a ``ValueError``) that names the file, says
what kind of file was expected and what was found — never a bare ``SafetensorError: invalid header length`` or an
``UnpicklingError`` with torch's advice to unpickle an untrusted file.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import torch

__all__ = ["CheckpointFileError", "load_safetensors", "load_torch_file"]

PathLike = Union[str, Path]


class CheckpointFileError(ValueError):
    """A weight file that cannot be read: missing, truncated, damaged, or not the expected kind of file."""


def _looks_like_text(path: Path) -> bool:
    try:
        head = path.read_bytes()[:512]
    except OSError:
        return False
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise CheckpointFileError(f"{path}: no such file (expected {kind})")
    if not path.is_file():
        raise CheckpointFileError(f"{path}: is a directory, not {kind}")
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path}: the file is empty (expected {kind}; an interrupted write?)")


def load_safetensors(path: PathLike, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a one-line error naming the file when it is not a readable one."""
    from safetensors.torch import load_file

    path = Path(path)
    kind = "a .safetensors weight file"
    _check_file(path, kind)
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # SafetensorError (not importable under one name in every version), OSError, ...
        if type(e).__name__ not in ("SafetensorError", "OSError", "ValueError", "RuntimeError", "EOFError"):
            raise
        what = "a text file" if _looks_like_text(path) else "damaged or truncated"
        raise CheckpointFileError(f"{path}: not a readable safetensors file ({what}: {str(e).strip() or type(e).__name__}); "
                                  f"expected {kind}") from None


def load_torch_file(path: PathLike, map_location: Any = "cpu", allow: Sequence[type] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error naming the file when it is not a readable
    PyTorch checkpoint (a text file, a truncated archive, garbage) or holds objects other than tensors and plain
    containers. ``allow`` lists further classes the unpickler may build (``torch.serialization.safe_globals``),
    e.g. ``argparse.Namespace`` for files that store their training arguments beside the weights."""
    path = Path(path)
    kind = "a PyTorch checkpoint (torch.save: .pt/.pth)"
    _check_file(path, kind)
    is_zip = zipfile.is_zipfile(path)
    try:
        with open(path, "rb") as f:
            first = f.read(2)
    except OSError as e:
        raise CheckpointFileError(f"{path}: cannot be read ({e.strerror})") from None
    if not is_zip and first == b"PK":
        raise CheckpointFileError(f"{path}: a truncated or damaged zip archive (expected {kind}; an interrupted "
                                  "write or copy?)")
    if not is_zip and first[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        what = "a text file" if _looks_like_text(path) else "neither a zip archive nor a pickle"
        raise CheckpointFileError(f"{path}: not {kind} ({what})")
    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: the error below says more
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            with torch.serialization.safe_globals(list(allow)):
                return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and ("Unsupported global" in str(e) or "GLOBAL" in str(e)):
            raise CheckpointFileError(
                f"{path}: holds objects other than tensors and plain containers, so it is not read with "
                "torch.load(weights_only=True); if you trust the file, load it yourself and pass the state "
                "dict") from None
        raise CheckpointFileError(f"{path}: not a readable PyTorch checkpoint (damaged or truncated)") from None
    except Exception as e:  # the unpickler fails on garbage in many ways (IndexError, KeyError, EOFError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointFileError(f"{path}: not a readable PyTorch checkpoint (damaged or truncated: {reason})") \
            from None

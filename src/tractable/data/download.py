"""Checksummed file downloads with ``urllib`` (any scheme it supports, including ``file://``).

:func:`download_file` streams ``url`` into ``<dest>.part``, checks the MD5, and only then renames it to
``dest``, so a half-written or tampered file never sits under the real name. :func:`md5sum` hashes a file.
Network failures become a :class:`DownloadError` that says what to do when offline.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from tractable.data.paths import ENV_VAR, PathLike

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched (offline, unreachable mirror, HTTP error)."""


class ChecksumError(ValueError):
    """A file's MD5 is not the expected one (corrupted, truncated, or a different file)."""


def md5sum(path: PathLike) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: PathLike, expected: str, *, what: Optional[str] = None) -> None:
    """Raise :class:`ChecksumError` unless ``md5sum(path) == expected`` (case-insensitive)."""
    got = md5sum(path)
    if got.lower() != expected.lower():
        raise ChecksumError(
            f"MD5 mismatch for {what or path}: expected {expected.lower()}, got {got}. The file is corrupted, "
            f"truncated or not the official one; delete it and download again (download=True), or pass md5= "
            f"with the checksum of the file you trust."
        )


def download_file(url: str, dest: PathLike, md5: Optional[str], *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` (parent folders created), verifying ``md5`` when given.

    Returns ``dest``. An existing ``dest`` with the right checksum is kept without downloading again.

    Raises:
        DownloadError: the URL could not be read.
        ChecksumError: the downloaded bytes do not match ``md5`` (the partial file is removed).
    """
    dest = Path(dest)
    if dest.exists() and md5 is not None:
        try:
            check_md5(dest, md5)
            return dest
        except ChecksumError:
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Could not download {url} to {dest}: {e}. If this machine is offline, download the file elsewhere "
            f"and copy it to {dest} (or point {ENV_VAR} at a folder that has it)."
        ) from e
    if md5 is not None:
        try:
            check_md5(part, md5, what=f"{url} (downloaded to {part})")
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    return dest

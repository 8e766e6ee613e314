"""Derive independent, reproducible seeds from tuples of integers (no global random state involved).

``derive_seed(seed, epoch)`` and ``derive_seed(seed, epoch, batch)`` give unrelated 63-bit seeds, so the
shuffling permutation of an epoch and the augmentation draws of each of its batches come from separate
``torch.Generator`` streams that any process can recreate on its own.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int) -> int:
    """Hash integers (and short strings) to a seed in ``[0, 2**63)``; the same parts always give the same seed."""
    if not parts:
        raise ValueError("derive_seed needs at least one part")
    tokens = []
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise ValueError(f"derive_seed parts must be ints or strings, got {p!r} ({type(p).__name__})")
        tokens.append(f"{type(p).__name__}:{p}")
    digest = hashlib.blake2b("|".join(tokens).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(*parts))
    return g

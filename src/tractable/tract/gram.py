"""The rows X of a layer's input and their second moment S = XᵀX, without holding more than one chunk of X.

For ``z = W x`` with ``W ∈ R^{m×n}`` TrAct needs the uncentred second moment of the rows of X, the matrix
whose rows are the vectors the weight actually multiplies (Petersen et al., arXiv 2410.23970, Sec. 3.1):

* Linear on ``(*, n)``: one row per leading position, ``b = ∏ leading dims``.
* ConvNd on ``(B, C, *S)``: one row per output location, the receptive field *after padding* (with the layer's
  ``padding_mode``), ordered ``(c, k₁ … k_d)`` exactly as ``weight.view(m, -1)``; ``b = B·∏S_out``.
  With ``groups`` the rows of group g see only their own channels, so S is one ``n_g × n_g`` block per group
  (the block diagonal of the full Gram) and b is shared by all groups.

Receptive fields are taken with ``Tensor.unfold`` views (one per spatial dimension, dilation by slicing), so
nothing is copied until a chunk is materialised in the compute dtype in weight order; the Gram is summed chunk
by chunk (over the batch, and over the first output dimension when one sample exceeds ``chunk_bytes``). When
kernel == stride and there is no padding the views do not overlap: a chunk is then a pure reshuffle of the
input (the patch-embedding case) and no receptive field is duplicated. In eager mode the chunks go through one
reused buffer (default 8 MiB: measured faster than large chunks, and no extra peak memory) and are multiplied
by :mod:`tractable.tract.gemm` (oneDNN in float32 on the CPU; for n ≥ 256 only the upper block triangle of S,
then mirrored: about half the flops of a full GEMM, as BLAS ``syrk`` would do).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from tractable.tract.eager import plain_eager
from tractable.tract.gemm import gram_add_, mirror_upper


DEFAULT_CHUNK_BYTES = 8 << 20  # measured: small reused chunks beat large ones (cache, no page faults)


class Geometry(NamedTuple):
    """Static description of how a layer forms its rows X (hashable, so compile treats it as a constant)."""

    kind: str  # "linear" or "conv"
    in_features: int  # n of the full layer (Linear) or C (conv input channels)
    groups: int = 1
    kernel: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    dilation: Tuple[int, ...] = ()
    pad: Tuple[int, ...] = ()  # F.pad order: last spatial dim first, (left, right) pairs
    pad_mode: str = "constant"

    @property
    def ndim(self) -> int:
        return len(self.kernel)

    @property
    def n_per_group(self) -> int:
        if self.kind == "linear":
            return self.in_features
        return self.in_features // self.groups * math.prod(self.kernel)


def _batched(x: torch.Tensor, geom: Geometry) -> torch.Tensor:
    if geom.kind == "linear":
        return x.reshape(-1, geom.in_features)
    if x.dim() == geom.ndim + 1:  # unbatched (C, *S)
        return x.unsqueeze(0)
    return x


def num_rows(x: torch.Tensor, geom: Geometry) -> int:
    """b, the number of rows of X (static for a given input shape)."""
    if geom.kind == "linear":
        return x.numel() // geom.in_features
    xb = _batched(x, geom)
    return xb.shape[0] * _rows_per_sample(xb.shape, geom)


def _rows_per_sample(shape, geom: Geometry) -> int:
    """Output locations of one sample of a batched conv input of this ``shape``."""
    r = 1
    for i in range(geom.ndim):
        size = shape[2 + i] + geom.pad[2 * (geom.ndim - 1 - i)] + geom.pad[2 * (geom.ndim - 1 - i) + 1]
        span = geom.dilation[i] * (geom.kernel[i] - 1) + 1
        r *= (size - span) // geom.stride[i] + 1
    return r


def _patches(xb: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """View (B, C, *S_out, *k) of the padded input: receptive field of every output location."""
    v = xb
    for i in range(geom.ndim):
        span = geom.dilation[i] * (geom.kernel[i] - 1) + 1
        v = v.unfold(2 + i, span, geom.stride[i])
        if geom.dilation[i] > 1:
            v = v[..., :: geom.dilation[i]]
    return v


def _pad(xb: torch.Tensor, geom: Geometry) -> torch.Tensor:
    if any(geom.pad):
        return F.pad(xb, list(geom.pad), mode=geom.pad_mode)
    return xb


def _chunks(xb: torch.Tensor, geom: Geometry, esize: int, chunk_bytes: int):
    """Yield materialised row chunks U of shape (groups, n_g, rows_in_chunk) in the compute dtype's size."""
    d = geom.ndim
    perm = [1] + list(range(2 + d, 2 + 2 * d)) + [0] + list(range(2, 2 + d))
    B = xb.shape[0]
    # rows per sample and bytes per sample of the materialised chunk
    per_sample = _rows_per_sample(xb.shape, geom) * geom.in_features * math.prod(geom.kernel) * esize
    if per_sample <= chunk_bytes:
        bc = max(1, min(B, chunk_bytes // max(per_sample, 1)))
        for b0 in range(0, B, bc):
            part = xb if bc >= B else xb[b0 : b0 + bc]
            yield _patches(_pad(part, geom), geom).permute(perm)
    else:  # one sample is too large: also split the first output dimension
        for b0 in range(B):
            v = _patches(_pad(xb[b0 : b0 + 1], geom), geom)
            o1 = v.shape[2]
            per_row = max(per_sample // max(o1, 1), 1)
            oc = max(1, chunk_bytes // per_row)
            for o0 in range(0, o1, oc):
                yield v[:, :, o0 : o0 + oc].permute(perm)


def _gram_buffered(pieces, G: int, n_g: int, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    """Eager path: every chunk (a view whose elements are ordered (group, feature, row)) is copied into one
    reused buffer (no allocation and page faults per chunk) and accumulated in place with
    :func:`tractable.tract.gemm.gram_add_` (oneDNN in float32; for large n only the upper block triangle)."""
    S = None
    buf = None
    for piece in pieces:
        numel = piece.numel()
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=like.device)
        U = buf[:numel].view(piece.shape)
        U.copy_(piece)
        S = gram_add_(S, U.view(G, n_g, -1))
    if S is None:  # no rows
        return like.new_zeros((G, n_g, n_g), dtype=dtype)
    return mirror_upper(S)


def gram(
    x: torch.Tensor, geom: Geometry, dtype: torch.dtype, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Tuple[torch.Tensor, int]:
    """Return ``(S, b)`` with ``S = XᵀX`` per group, shape ``(groups, n_g, n_g)``, accumulated in ``dtype``."""
    n_g = geom.n_per_group
    esize = dtype.itemsize
    if geom.kind == "linear":
        X = x.reshape(-1, n_g)
        b = X.shape[0]
        rows = max(1, chunk_bytes // max(n_g * esize, 1))
        if plain_eager(X):  # chunks of Xᵀ (n, rows) through the reused buffer
            pieces = (X[r0 : r0 + rows].mT.unsqueeze(0) for r0 in range(0, b, rows))
            return _gram_buffered(pieces, 1, n_g, dtype, X), b
        if X.dtype == dtype:
            return (X.mT @ X).unsqueeze(0), b
        S: Optional[torch.Tensor] = None
        for r0 in range(0, b, rows):
            Xc = X[r0 : r0 + rows].to(dtype)
            part = Xc.mT @ Xc
            S = part if S is None else S + part
        if S is None:
            S = x.new_zeros((n_g, n_g), dtype=dtype)
        return S.unsqueeze(0), b
    xb = _batched(x, geom)
    b = num_rows(xb, geom)
    if plain_eager(xb):
        return _gram_buffered(_chunks(xb, geom, esize, chunk_bytes), geom.groups, n_g, dtype, xb), b
    S = None
    for piece in _chunks(xb, geom, esize, chunk_bytes):
        U = piece.to(dtype=dtype, memory_format=torch.contiguous_format).reshape(geom.groups, n_g, -1)
        part = U @ U.mT
        S = part if S is None else S + part
    if S is None:
        S = x.new_zeros((geom.groups, n_g, n_g), dtype=dtype)
    return S, b


def rows(x: torch.Tensor, geom: Geometry, dtype: torch.dtype) -> torch.Tensor:
    """All rows at once as ``Xᵀ`` per group, shape ``(groups, n_g, b)`` (for the b×b form, where b < n)."""
    if geom.kind == "linear":
        return x.reshape(-1, geom.in_features).to(dtype).mT.unsqueeze(0)
    xb = _batched(x, geom)
    d = geom.ndim
    perm = [1] + list(range(2 + d, 2 + 2 * d)) + [0] + list(range(2, 2 + d))
    U = _patches(_pad(xb, geom), geom).permute(perm)
    return U.to(dtype=dtype, memory_format=torch.contiguous_format).reshape(geom.groups, geom.n_per_group, -1)

"""Batched RandAugment and Random Erasing on the device, driven by an explicit ``torch.Generator``.

Algorithm
---------
*RandAugment* (Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced search space",
CVPR-W 2020), in the variant of timm's policy string ``rand-m9-mstd0.5-inc1``: every sample goes through
``num_ops`` (2) layers; each layer picks one op uniformly at random (with replacement across layers) from the 15
ops below and applies it with probability ``prob`` (0.5). The magnitude of every application is drawn from
``Normal(magnitude, magnitude_std)`` (``magnitude_std=inf``: ``Uniform(0, magnitude)``) and clipped to
``[0, magnitude_max]`` = ``[0, 10]``; level ``m`` maps to the op's argument as in timm (``sign``: a random ±1,
drawn per application)::

    AutoContrast          per sample-channel min/max stretched to [0, 255] (PIL ImageOps.autocontrast)
    Equalize              per sample-channel histogram equalisation (PIL ImageOps.equalize)
    Invert                255 - x
    Rotate                sign · 30° · m/10, counter-clockwise about the image centre
    PosterizeIncreasing   keep 4 - floor(4·m/10) high bits (m=9: 1 bit, m=10: 0 bits, i.e. black)
    SolarizeIncreasing    invert pixels >= 256 - floor(256·m/10)
    SolarizeAdd           add floor(110·m/10) to pixels < 128 (clipped at 255)
    ColorIncreasing       blend with the grayscale image,            factor 1 + sign · 0.9·m/10
    ContrastIncreasing    blend with the rounded mean of the grayscale, factor 1 + sign · 0.9·m/10
    BrightnessIncreasing  blend with black,                          factor 1 + sign · 0.9·m/10
    SharpnessIncreasing   blend with the 3x3 SMOOTH-filtered image,   factor 1 + sign · 0.9·m/10
    ShearX / ShearY       shear factor sign · 0.3·m/10 (about the top-left corner, as PIL's affine transform)
    TranslateXRel / YRel  shift by sign · 0.45·m/10 of the width / height

``increasing=False`` gives timm's original (``inc0``) set instead, where Posterize keeps floor(4·m/10) bits,
Solarize inverts pixels >= floor(256·m/10) and the four enhancements use the factor 0.1 + 1.8·m/10.

The point and colour ops follow PIL's integer semantics, which timm uses: grayscale is ITU-R 601 luma
``(19595 R + 38470 G + 7471 B + 2^15) >> 16``; blends are ``trunc(clip(d + f·(x - d), 0, 255))``; the SMOOTH
kernel is ``[[1,1,1],[1,5,1],[1,1,1]]/13`` rounded, with the one-pixel border left unfiltered. The geometric ops
use PIL's convention too: an affine map from each *output* pixel centre ``(j + ½, i + ½)`` (origin at the
top-left corner of the image) to an input point, sampled by nearest neighbour (the input pixel containing the
point), with ``fill`` outside the image (timm's ``img_mean``: ``round(255 · mean)`` of the normalisation, 128
for the recipe's mean 0.5; :class:`~tractable.data.DeviceLoader` uses ``info.mean``). They are implemented as
one ``F.affine_grid`` + ``F.grid_sample`` per layer over the samples that drew a geometric op.

*Random Erasing* (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020), as timm's ``RandomErasing``
(``re_prob=0.25, re_mode='const', re_count=1``): with probability ``p`` per sample, draw a target area
``Uniform(scale)·H·W`` and an aspect ratio ``r``; the rectangle has ``h = round(sqrt(area·r))``,
``w = round(sqrt(area/r))`` and is accepted if ``h < H`` and ``w < W``, with its top-left corner uniform over
the positions where it fits. Up to ``attempts`` (10) draws are made, all at once; the first one that fits is
used, and a sample none of whose draws fits is left unerased (as timm). The rectangle is set to 0 (``const``:
the normalised mean), to per-pixel ``Normal(0, 1)`` noise (``pixel``) or to one ``Normal(0, 1)`` value per
channel (``rand``). It runs on the normalised float batch.

Vectorisation and randomness
----------------------------
Sampling and application are split (:func:`sample_rand_augment_params` / :func:`apply_rand_augment`,
:func:`sample_erasing_params` / :func:`apply_erasing`) so that a distributed loader can draw the parameters of
a whole global batch and apply only its slice (``params[lo:hi]``). All random numbers come from the given
generator, on its device, in a fixed order and amount that does not depend on the data. Application loops only
over layers and ops: every op is applied at once to the samples that drew it (the others are untouched), with
per-sample parameters; there is no Python loop over samples.

Where we deliberately differ (from timm, or from the papers)
------------------------------------------------------------
* Geometric ops use nearest-neighbour sampling; timm uses bilinear (or a random choice of bilinear / bicubic,
  depending on how the transform is built). ``interpolation="bilinear"`` is available.
* Nearest sampling is ``floor`` of the source point, as PIL; ``grid_sample`` rounds half to even, so the map is
  shifted by 1e-4 pixel to make exact ties (e.g. rotations by exactly 30°) resolve as PIL, on every device.
* The random streams are torch's, so individual draws differ from timm's (which also draws a magnitude only for
  the ops it applies); the distributions are the same.
* Only 1- and 3-channel images are supported; on a 1-channel image Color is the identity and the grayscale is
  the image itself (as PIL's ``L`` mode).
* Random erasing follows timm, not the paper, where they differ: the aspect ratio is log-uniform on ``ratio``
  (Zhong et al.: uniform), ``h < H`` and ``w < W`` are required (paper: fits inside), and the number of attempts
  is bounded (paper: retry until one fits). The default ``ratio`` upper end is exactly 1/0.3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from tractable.data.augment import check_generator

__all__ = [
    "ErasingParams",
    "RandAugmentParams",
    "adjust_brightness",
    "adjust_color",
    "adjust_contrast",
    "adjust_sharpness",
    "affine",
    "apply_erasing",
    "apply_rand_augment",
    "autocontrast",
    "equalize",
    "invert",
    "op_names",
    "posterize",
    "rand_augment",
    "random_erasing",
    "rotate_matrix",
    "sample_erasing_params",
    "sample_rand_augment_params",
    "shear_matrix",
    "solarize",
    "solarize_add",
    "translate_matrix",
]

_OPS_INCREASING = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
_OPS_ORIGINAL = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# op indices (the same in both sets)
(AUTOCONTRAST, EQUALIZE, INVERT, ROTATE, POSTERIZE, SOLARIZE, SOLARIZE_ADD, COLOR, CONTRAST, BRIGHTNESS,
 SHARPNESS, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y) = range(15)
NUM_OPS = 15
_GEOMETRIC = (ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y)

LEVEL_DENOM = 10.0  # level m is scaled by m / 10
MAX_ROTATE = 30.0  # degrees
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45  # fraction of the width / height
MAX_SOLARIZE_ADD = 110
SOLARIZE_ADD_THRESHOLD = 128
_INTERPOLATIONS = ("nearest", "bilinear")
_TIE_SHIFT = 1e-4  # pixels
_ERASE_MODES = ("const", "pixel", "rand")


def op_names(increasing: bool = True) -> Tuple[str, ...]:
    """The 15 op names in index order (timm's ``_RAND_INCREASING_TRANSFORMS`` or ``_RAND_TRANSFORMS``)."""
    return _OPS_INCREASING if increasing else _OPS_ORIGINAL


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _check_images(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype != torch.uint8:
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} expects a uint8 (N, C, H, W) tensor, got {desc}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{what} supports 1- or 3-channel images, got {x.shape[1]} channels")


def _per_sample(value, n: int, device, dtype) -> torch.Tensor:
    """A scalar or an ``(n,)`` tensor as an ``(n,)`` tensor of ``dtype`` on ``device``."""
    t = torch.as_tensor(value, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"per-sample parameter must be a scalar or have shape ({n},), got {tuple(t.shape)}")
    return t.to(dtype)


def _view4(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``out[n, c, ...] = lut[n, c, x[n, c, ...]]`` for a uint8 ``(N, C, 256)`` table."""
    n, c = x.shape[:2]
    return lut.gather(2, x.reshape(n, c, -1).long()).view(x.shape)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")``: int32 ``(N, 1, H, W)``, ITU-R 601 luma in fixed point, rounded."""
    if x.shape[1] == 1:
        return x.to(torch.int32)
    r, g, b = x.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)``: ``trunc(clip(d + f·(x - d), 0, 255))`` per sample."""
    d = degenerate.to(torch.float32)
    f = _view4(factor.to(device=x.device, dtype=torch.float32))
    return (d + f * (x.to(torch.float32) - d)).clamp_(0, 255).floor_().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# point and colour ops: x uint8 (N, C, H, W), per-sample parameters as scalars or (N,) tensors
# ---------------------------------------------------------------------------------------------------------
def invert(x: torch.Tensor) -> torch.Tensor:
    """``255 - x``."""
    _check_images(x, "invert")
    return x.bitwise_not()


def posterize(x: torch.Tensor, bits) -> torch.Tensor:
    """Keep the ``bits[i]`` (0..8) most significant bits of every pixel of sample ``i``."""
    _check_images(x, "posterize")
    bits = _per_sample(bits, x.shape[0], x.device, torch.int64)
    if bits.numel() and (int(bits.min()) < 0 or int(bits.max()) > 8):
        raise ValueError("posterize bits must lie in [0, 8]")
    mask = torch.bitwise_left_shift(torch.full_like(bits, 0xFF), 8 - bits).bitwise_and_(0xFF).to(torch.uint8)
    return x & _view4(mask)


def solarize(x: torch.Tensor, threshold) -> torch.Tensor:
    """Invert the pixels ``>= threshold[i]`` of sample ``i`` (256: identity, 0: full inversion)."""
    _check_images(x, "solarize")
    threshold = _per_sample(threshold, x.shape[0], x.device, torch.int16)
    return torch.where(x.to(torch.int16) >= _view4(threshold), x.bitwise_not(), x)


def solarize_add(x: torch.Tensor, add, threshold: int = SOLARIZE_ADD_THRESHOLD) -> torch.Tensor:
    """Add ``add[i]`` to the pixels ``< threshold`` of sample ``i``, clipping at 255."""
    _check_images(x, "solarize_add")
    add = _per_sample(add, x.shape[0], x.device, torch.int16)
    shifted = (x.to(torch.int16) + _view4(add)).clamp_(0, 255).to(torch.uint8)
    return torch.where(x < threshold, shifted, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per sample and channel, map ``[lo, hi]`` (its min and max) linearly onto ``[0, 255]``.

    As PIL: ``trunc(v·s + o)`` with ``s = 255 / (hi - lo)``, ``o = -lo·s`` (in float64), clipped to
    ``[0, 255]``; a constant channel is left unchanged.
    """
    _check_images(x, "autocontrast")
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    if flat.shape[2] == 0:
        return x.clone()
    lo = flat.amin(2).to(torch.float64)
    hi = flat.amax(2).to(torch.float64)
    span = hi - lo
    scale = torch.full_like(span, 255.0) / span.clamp(min=1.0)  # a true division (not ``255 * (1 / span)``)
    offset = -lo * scale
    levels = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = (levels * scale[..., None] + offset[..., None]).floor_().clamp_(0, 255)
    lut = torch.where((span > 0)[..., None], lut, levels).to(torch.uint8)
    return _apply_lut(x, lut)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per sample and channel histogram equalisation, as PIL's ``ImageOps.equalize``.

    With ``h`` the channel's 256-bin histogram and ``step = (#pixels - h[max value]) // 255``, value ``v`` maps
    to ``(step // 2 + #pixels below v) // step`` (clipped to 255); ``step = 0`` (e.g. fewer than two distinct
    values) leaves the channel unchanged.
    """
    _check_images(x, "equalize")
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).long()
    total = flat.shape[2]
    if total == 0:
        return x.clone()
    hist = torch.zeros(n, c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    last = hist.gather(2, flat.amax(2, keepdim=True))  # count of the largest value (the last nonzero bin)
    step = (total - last) // 255  # (N, C, 1)
    below = hist.cumsum(2) - hist  # pixels strictly below each value
    safe = step.clamp(min=1)
    lut = ((safe // 2 + below) // safe).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device)).to(torch.uint8)
    return _apply_lut(x, lut)


def adjust_color(x: torch.Tensor, factor) -> torch.Tensor:
    """PIL ``ImageEnhance.Color``: blend each sample with its grayscale by ``factor[i]`` (1: identity)."""
    _check_images(x, "adjust_color")
    return _blend(_grayscale(x), x, _per_sample(factor, x.shape[0], x.device, torch.float32))


def adjust_contrast(x: torch.Tensor, factor) -> torch.Tensor:
    """PIL ``ImageEnhance.Contrast``: blend with the sample's mean grayscale level (rounded half up)."""
    _check_images(x, "adjust_contrast")
    gray = _grayscale(x)
    mean = torch.floor(gray.to(torch.float64).mean(dim=(1, 2, 3)) + 0.5)
    return _blend(_view4(mean), x, _per_sample(factor, x.shape[0], x.device, torch.float32))


def adjust_brightness(x: torch.Tensor, factor) -> torch.Tensor:
    """PIL ``ImageEnhance.Brightness``: blend with black, i.e. ``trunc(clip(f·x, 0, 255))``."""
    _check_images(x, "adjust_brightness")
    return _blend(torch.zeros((), device=x.device), x, _per_sample(factor, x.shape[0], x.device, torch.float32))


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.SMOOTH``: kernel [[1,1,1],[1,5,1],[1,1,1]]/13, rounded; border pixels unchanged."""
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x.clone()
    kernel = torch.ones(1, 1, 3, 3, dtype=torch.float32, device=x.device)
    kernel[0, 0, 1, 1] = 5.0
    sums = F.conv2d(x.reshape(n * c, 1, h, w).to(torch.float32), kernel).view(n, c, h - 2, w - 2)
    out = x.clone()
    # integer sums / 13 are never exactly k + 1/2, so the rounding is unambiguous
    out[:, :, 1:-1, 1:-1] = torch.floor(sums / 13.0 + 0.5).to(torch.uint8)
    return out


def adjust_sharpness(x: torch.Tensor, factor) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (factor > 1 sharpens)."""
    _check_images(x, "adjust_sharpness")
    return _blend(_smooth(x), x, _per_sample(factor, x.shape[0], x.device, torch.float32))


# ---------------------------------------------------------------------------------------------------------
# geometric ops
# ---------------------------------------------------------------------------------------------------------
def rotate_matrix(degrees, height: int, width: int) -> torch.Tensor:
    """``(N, 2, 3)`` float64 maps output → input point of a counter-clockwise rotation about the image centre."""
    a = torch.deg2rad(torch.as_tensor(degrees, dtype=torch.float64).reshape(-1))
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = width / 2.0, height / 2.0
    row0 = torch.stack([cos, -sin, cx - cos * cx + sin * cy], 1)
    row1 = torch.stack([sin, cos, cy - sin * cx - cos * cy], 1)
    return torch.stack([row0, row1], 1)


def shear_matrix(factor, axis: str) -> torch.Tensor:
    """``(N, 2, 3)`` maps of a shear about the top-left corner: ``x_in = x + f·y`` (``"x"``) or ``y_in = y + f·x``."""
    f = torch.as_tensor(factor, dtype=torch.float64).reshape(-1)
    m = torch.eye(2, 3, dtype=torch.float64).repeat(f.shape[0], 1, 1)
    if axis == "x":
        m[:, 0, 1] = f
    elif axis == "y":
        m[:, 1, 0] = f
    else:
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    return m


def translate_matrix(pixels, axis: str) -> torch.Tensor:
    """``(N, 2, 3)`` maps ``x_in = x + p`` (``"x"``) or ``y_in = y + p``: the content moves by ``-p`` pixels."""
    p = torch.as_tensor(pixels, dtype=torch.float64).reshape(-1)
    m = torch.eye(2, 3, dtype=torch.float64).repeat(p.shape[0], 1, 1)
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    m[:, 0 if axis == "x" else 1, 2] = p
    return m


def _fill_tensor(fill, channels: int, device) -> torch.Tensor:
    f = torch.as_tensor(fill, dtype=torch.float32).reshape(-1)
    if f.numel() == 1:
        f = f.expand(channels)
    if f.numel() != channels:
        raise ValueError(f"fill must be one value or one per channel ({channels}), got {f.numel()}")
    if float(f.min()) < 0 or float(f.max()) > 255:
        raise ValueError("fill values must lie in [0, 255]")
    return f.to(device).view(1, channels, 1, 1)


def affine(x: torch.Tensor, matrix: torch.Tensor, fill: Union[int, Sequence[int]] = 128,
           interpolation: str = "nearest") -> torch.Tensor:
    """Resample each sample through its own affine map, PIL-style.

    ``matrix[i]`` (``(N, 2, 3)``) maps an output point ``(x, y)`` in pixel units, origin at the top-left corner
    of the image, to the input point it is read from; output pixel ``(i, j)`` is the point ``(j + ½, i + ½)``.
    ``nearest`` reads the input pixel containing that point (``floor``; a point on a pixel edge, e.g. after a
    rotation by exactly 30°, goes to the right / lower pixel, as in PIL), ``fill`` where it lies outside the
    image.
    """
    _check_images(x, "affine")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    n, c, h, w = x.shape
    if matrix.shape != (n, 2, 3):
        raise ValueError(f"matrix must have shape ({n}, 2, 3), got {tuple(matrix.shape)}")
    fill_t = _fill_tensor(fill, c, x.device)
    if n == 0:
        return x.clone()
    # theta = (pixel → normalised) · A · (normalised → pixel), align_corners=False convention
    m = matrix.to(device=x.device, dtype=torch.float64)
    if interpolation == "nearest":
        # grid_sample rounds x_in - 1/2 half-to-even; shifting by a hair (far above float32 error, far below a
        # pixel) turns that into floor(x_in) at exact ties too, identically on every device
        m = m + torch.tensor([[0.0, 0.0, _TIE_SHIFT], [0.0, 0.0, _TIE_SHIFT]], dtype=torch.float64, device=x.device)
    a3 = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64, device=x.device).expand(n, 1, 3)], 1)
    to_pix = torch.tensor([[w / 2.0, 0.0, w / 2.0], [0.0, h / 2.0, h / 2.0], [0.0, 0.0, 1.0]],
                          dtype=torch.float64, device=x.device)
    to_norm = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]],
                           dtype=torch.float64, device=x.device)
    theta = (to_norm @ a3 @ to_pix)[:, :2].to(torch.float32)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    # zero padding of (x - fill) is padding with fill; nearest sampling keeps the values exact
    out = F.grid_sample(x.to(torch.float32) - fill_t, grid, mode=interpolation, padding_mode="zeros",
                        align_corners=False)
    return (out + fill_t).round_().clamp_(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# RandAugment
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandAugmentParams:
    """Per-sample, per-layer draws of :func:`rand_augment`; ``params[lo:hi]`` selects samples.

    ``ops`` (int64 op indices into :func:`op_names`), ``applied`` (bool), ``magnitude`` (float64 level in
    ``[0, magnitude_max]``) and ``negate`` (bool: the signed ops use ``-argument``), all ``(N, num_ops)``.
    """

    ops: torch.Tensor
    applied: torch.Tensor
    magnitude: torch.Tensor
    negate: torch.Tensor
    increasing: bool = True

    def __len__(self) -> int:
        return self.ops.shape[0]

    def __getitem__(self, index) -> "RandAugmentParams":
        return RandAugmentParams(self.ops[index], self.applied[index], self.magnitude[index], self.negate[index],
                                 self.increasing)

    def to(self, device) -> "RandAugmentParams":
        return RandAugmentParams(*(getattr(self, f.name).to(device) if f.name != "increasing" else self.increasing
                                   for f in fields(self)))


def sample_rand_augment_params(n: int, generator: torch.Generator, num_ops: int = 2, magnitude: float = 9.0,
                               magnitude_std: float = 0.5, increasing: bool = True, prob: float = 0.5,
                               magnitude_max: float = 10.0) -> RandAugmentParams:
    """Draw the RandAugment choices of ``n`` samples (on the generator's device).

    Always draws, in this order: op indices, apply decisions, standard normals, uniforms (for
    ``magnitude_std=inf``) and signs, each ``(n, num_ops)``.
    """
    check_generator(generator)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be a non-negative int, got {num_ops!r}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if not 0.0 < magnitude_max < math.inf:
        raise ValueError(f"magnitude_max must be positive and finite, got {magnitude_max}")
    if not 0.0 <= magnitude <= magnitude_max:
        raise ValueError(f"magnitude must be in [0, magnitude_max={magnitude_max}], got {magnitude}")
    if not magnitude_std >= 0.0:
        raise ValueError(f"magnitude_std must be >= 0 (or inf), got {magnitude_std}")
    dev = generator.device
    shape = (n, num_ops)
    ops = torch.randint(0, NUM_OPS, shape, generator=generator, device=dev)
    applied = torch.rand(shape, generator=generator, device=dev) < prob
    normal = torch.randn(shape, generator=generator, device=dev, dtype=torch.float64)
    uniform = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)
    negate = torch.rand(shape, generator=generator, device=dev) < 0.5
    if magnitude_std == math.inf:
        mag = uniform * magnitude
    else:
        mag = magnitude + magnitude_std * normal
    return RandAugmentParams(ops, applied, mag.clamp(0.0, magnitude_max), negate, bool(increasing))


def _signed(value: torch.Tensor, negate: torch.Tensor) -> torch.Tensor:
    return torch.where(negate, -value, value)


def op_argument(op: int, magnitude: torch.Tensor, negate: torch.Tensor, increasing: bool = True,
                height: int = 1, width: int = 1) -> torch.Tensor:
    """The argument of ``op`` at level ``magnitude`` (timm's level → argument map), float64 per sample.

    Degrees (Rotate), bits (Posterize), threshold (Solarize), added value (SolarizeAdd), blend factor (the four
    enhancements), shear factor, or pixels (translations, relative to ``width`` / ``height``); 0 for the ops
    without an argument.
    """
    m = magnitude.to(torch.float64) / torch.full_like(magnitude, LEVEL_DENOM, dtype=torch.float64)
    if op == ROTATE:
        return _signed(m * MAX_ROTATE, negate)
    if op == POSTERIZE:
        bits = torch.floor(m * 4)
        return 4 - bits if increasing else bits
    if op == SOLARIZE:
        thr = torch.floor(m * 256)
        return 256 - thr if increasing else thr
    if op == SOLARIZE_ADD:
        return torch.floor(m * MAX_SOLARIZE_ADD)
    if op in (COLOR, CONTRAST, BRIGHTNESS, SHARPNESS):
        if increasing:
            return (1.0 + _signed(m * 0.9, negate)).clamp(min=0.1)
        return m * 1.8 + 0.1
    if op in (SHEAR_X, SHEAR_Y):
        return _signed(m * MAX_SHEAR, negate)
    if op == TRANSLATE_X:
        return _signed(m * MAX_TRANSLATE, negate) * width
    if op == TRANSLATE_Y:
        return _signed(m * MAX_TRANSLATE, negate) * height
    return torch.zeros_like(m)


def _geometric_matrix(op: torch.Tensor, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-sample ``(N, 2, 3)`` maps for geometric op indices ``op`` with arguments ``arg``."""
    mats = torch.eye(2, 3, dtype=torch.float64, device=arg.device).repeat(op.shape[0], 1, 1)
    rot = rotate_matrix(arg, height, width).to(arg.device)
    mats = torch.where((op == ROTATE).view(-1, 1, 1), rot, mats)
    mats[:, 0, 1] = torch.where(op == SHEAR_X, arg, mats[:, 0, 1])
    mats[:, 1, 0] = torch.where(op == SHEAR_Y, arg, mats[:, 1, 0])
    mats[:, 0, 2] = torch.where(op == TRANSLATE_X, arg, mats[:, 0, 2])
    mats[:, 1, 2] = torch.where(op == TRANSLATE_Y, arg, mats[:, 1, 2])
    return mats


def _apply_point_op(op: int, x: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
    if op == AUTOCONTRAST:
        return autocontrast(x)
    if op == EQUALIZE:
        return equalize(x)
    if op == INVERT:
        return invert(x)
    if op == POSTERIZE:
        return posterize(x, arg.long())
    if op == SOLARIZE:
        return solarize(x, arg.long())
    if op == SOLARIZE_ADD:
        return solarize_add(x, arg.long())
    if op == COLOR:
        return adjust_color(x, arg)
    if op == CONTRAST:
        return adjust_contrast(x, arg)
    if op == BRIGHTNESS:
        return adjust_brightness(x, arg)
    if op == SHARPNESS:
        return adjust_sharpness(x, arg)
    raise AssertionError(op)


def apply_rand_augment(x: torch.Tensor, params: RandAugmentParams, fill: Union[int, Sequence[int]] = 128,
                       interpolation: str = "nearest") -> torch.Tensor:
    """Apply drawn RandAugment choices to a uint8 ``(N, C, H, W)`` batch (``len(params) == N``); returns a copy.

    Layers run in order; within a layer every sample has one op, so each op (and all geometric ops together, in
    one resampling) is applied to the samples that drew it and passed the probability test.
    """
    _check_images(x, "rand_augment")
    if not isinstance(params, RandAugmentParams) or len(params) != x.shape[0]:
        raise ValueError(f"params must be RandAugmentParams for {x.shape[0]} samples")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    _fill_tensor(fill, x.shape[1], "cpu")  # validate early, even when no geometric op is drawn
    h, w = x.shape[2:]
    # the op arguments are computed where the params were drawn (the CPU for DeviceLoader), so that the same
    # draws give the same arguments on every device
    args = torch.zeros(params.magnitude.shape, dtype=torch.float64, device=params.magnitude.device)
    for k in range(NUM_OPS):
        args = torch.where(params.ops == k, op_argument(k, params.magnitude, params.negate, params.increasing, h, w),
                           args)
    ops, applied, args = params.ops.to(x.device), params.applied.to(x.device), args.to(x.device)
    out = x.clone()
    geometric = torch.tensor(_GEOMETRIC, device=x.device)
    for layer in range(ops.shape[1]):
        op, active, arg = ops[:, layer], applied[:, layer], args[:, layer]
        idx = (active & torch.isin(op, geometric)).nonzero().squeeze(1)
        if idx.numel():  # all geometric ops of this layer in one resampling
            sub = affine(out.index_select(0, idx), _geometric_matrix(op[idx], arg[idx], h, w), fill, interpolation)
            out.index_copy_(0, idx, sub)
        for k in range(NUM_OPS):
            if k in _GEOMETRIC:
                continue
            idx = (active & (op == k)).nonzero().squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, _apply_point_op(k, out.index_select(0, idx), arg[idx]))
    return out


def rand_augment(x: torch.Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, increasing: bool = True, fill: Union[int, Sequence[int]] = 128,
                 prob: float = 0.5, interpolation: str = "nearest") -> torch.Tensor:
    """RandAugment (timm ``rand-m{magnitude}-mstd{magnitude_std}-inc{increasing}``) on a uint8 batch.

    Each sample independently gets ``num_ops`` ops drawn uniformly from :func:`op_names`, each applied with
    probability ``prob`` at a level drawn from ``Normal(magnitude, magnitude_std)`` clipped to ``[0, 10]``;
    geometric ops fill uncovered pixels with ``fill`` (one value or one per channel). See the module docstring.
    """
    _check_images(x, "rand_augment")
    params = sample_rand_augment_params(x.shape[0], generator, num_ops, magnitude, magnitude_std, increasing, prob)
    return apply_rand_augment(x, params, fill, interpolation)


# ---------------------------------------------------------------------------------------------------------
# Random Erasing
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErasingParams:
    """Per-sample rectangles of :func:`random_erasing`; ``params[lo:hi]`` selects samples.

    ``erase`` (bool), ``top``, ``left``, ``height``, ``width`` (int64, all 0 where not erased), all ``(N,)``;
    ``noise``: ``None`` (``const``), ``(N, C, H, W)`` (``pixel``) or ``(N, C, 1, 1)`` (``rand``) float32 values.
    """

    erase: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    noise: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.erase.shape[0]

    def __getitem__(self, index) -> "ErasingParams":
        return ErasingParams(*(None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                               for f in fields(self)))

    def to(self, device) -> "ErasingParams":
        return ErasingParams(*(None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                               for f in fields(self)))


def sample_erasing_params(n: int, shape: Sequence[int], generator: torch.Generator, p: float = 0.25,
                          scale: Tuple[float, float] = (0.02, 1 / 3), ratio: Tuple[float, float] = (0.3, 1 / 0.3),
                          mode: str = "const", attempts: int = 10) -> ErasingParams:
    """Draw the erased rectangles of ``n`` samples of ``shape = (C, H, W)`` (see the module docstring).

    Always draws, in this order: ``n`` apply uniforms, ``(n, attempts)`` area and log-ratio uniforms, ``n`` top
    and ``n`` left uniforms, then the noise of ``pixel`` / ``rand`` mode.
    """
    check_generator(generator)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W), got {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if len(scale) != 2 or not 0.0 <= scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must be (lo, hi) with 0 <= lo <= hi <= 1, got {scale}")
    if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")
    if mode not in _ERASE_MODES:
        raise ValueError(f"mode must be one of {_ERASE_MODES}, got {mode!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be a positive int, got {attempts!r}")
    dev = generator.device
    f64 = torch.float64
    u_apply = torch.rand(n, generator=generator, device=dev, dtype=f64)
    u_area = torch.rand(n, attempts, generator=generator, device=dev, dtype=f64)
    u_ratio = torch.rand(n, attempts, generator=generator, device=dev, dtype=f64)
    u_top = torch.rand(n, generator=generator, device=dev, dtype=f64)
    u_left = torch.rand(n, generator=generator, device=dev, dtype=f64)
    area = (scale[0] + (scale[1] - scale[0]) * u_area) * (h * w)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    eh = torch.round(torch.sqrt(area * aspect)).long()
    ew = torch.round(torch.sqrt(area / aspect)).long()
    fits = (eh < h) & (ew < w)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # first attempt that fits (0 if none does)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    erase = (u_apply < p) & fits.any(1)
    top = torch.minimum(torch.floor(u_top * (h - eh + 1)).long(), h - eh)
    left = torch.minimum(torch.floor(u_left * (w - ew + 1)).long(), w - ew)
    zero = torch.zeros_like(eh)
    eh, ew, top, left = (torch.where(erase, t, zero) for t in (eh, ew, top, left))
    noise = None
    if mode == "pixel":
        noise = torch.randn((n, c, h, w), generator=generator, device=dev)
    elif mode == "rand":
        noise = torch.randn((n, c, 1, 1), generator=generator, device=dev)
    return ErasingParams(erase, top, left, eh, ew, noise)


def erasing_mask(params: ErasingParams, height: int, width: int, device=None) -> torch.Tensor:
    """Bool ``(N, 1, H, W)``: the erased rectangle of every sample (empty where not erased)."""
    device = params.top.device if device is None else device
    top, left = params.top.to(device), params.left.to(device)
    bottom, right = top + params.height.to(device), left + params.width.to(device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])  # (N, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def apply_erasing(x: torch.Tensor, params: ErasingParams) -> torch.Tensor:
    """Erase the drawn rectangles of a float ``(N, C, H, W)`` batch (0, or the drawn noise); returns a copy."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"random erasing expects a floating (N, C, H, W) tensor, got {desc}")
    if not isinstance(params, ErasingParams) or len(params) != x.shape[0]:
        raise ValueError(f"params must be ErasingParams for {x.shape[0]} samples")
    mask = erasing_mask(params, x.shape[2], x.shape[3], x.device)
    if params.noise is None:
        value = torch.zeros((), dtype=x.dtype, device=x.device)
    else:
        if params.noise.shape[1] != x.shape[1] or (params.noise.shape[2:] != (1, 1)
                                                   and params.noise.shape[2:] != x.shape[2:]):
            raise ValueError(f"noise of shape {tuple(params.noise.shape)} does not fit a batch {tuple(x.shape)}")
        value = params.noise.to(device=x.device, dtype=x.dtype)
    return torch.where(mask, value, x)


def random_erasing(x: torch.Tensor, generator: torch.Generator, p: float = 0.25,
                   scale: Tuple[float, float] = (0.02, 1 / 3), ratio: Tuple[float, float] = (0.3, 1 / 0.3),
                   mode: str = "const", attempts: int = 10) -> torch.Tensor:
    """Random Erasing (Zhong et al. 2020, as timm's ``RandomErasing``) on a normalised float batch.

    With probability ``p`` per sample one rectangle is set to 0 (``const``), per-pixel ``Normal(0, 1)`` noise
    (``pixel``) or a per-channel ``Normal(0, 1)`` value (``rand``). See the module docstring for the sampling.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("random_erasing expects an (N, C, H, W) tensor")
    params = sample_erasing_params(x.shape[0], x.shape[1:], generator, p, scale, ratio, mode, attempts)
    return apply_erasing(x, params)

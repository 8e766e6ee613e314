"""Image transforms for training generative models on folder datasets: resize + centre crop (+ optional flip).

A diffusion model learns the distribution of the images it is shown; classification augmentation (random-resized
crops of 8-100 % of the image, padded random crops) changes that distribution. These transforms keep the whole
image at the model's resolution, as the reference diffusion code bases do (ADM's and DiT's ``center_crop_arr``):

1. while the shorter side is ≥ 2·size, halve the image with a box filter (cheap, alias-free downscaling);
2. scale so that the shorter side is exactly ``size`` (bicubic);
3. crop the central size×size square (offsets ⌊(W − size)/2⌋, ⌊(H − size)/2⌋).

:class:`CenterCropResize` returns a uint8 ``(C, H, W)`` tensor, like every folder-dataset item, so the loaders'
``to_float`` + ``normalize`` apply unchanged. ``flip=True`` mirrors the image left-right with probability ½,
drawing from torch's random state, which a ``DataLoader`` seeds per worker from its ``generator`` (the same
convention as torchvision's random transforms). Only Pillow is needed (no torchvision).

``tractable.data.imagefolder`` offers them as ``transform="diffusion"`` (flip on the training split only) and
``"diffusion_noflip"``; ``task=diffusion`` makes ``"diffusion"`` the default on folder datasets.
"""
from __future__ import annotations

import torch

__all__ = ["center_crop_resize", "CenterCropResize"]


def center_crop_resize(img, size: int):
    """A PIL image → a size×size PIL image (steps 1-3 of the module docstring)."""
    from PIL import Image

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: must be an int >= 1, got {size!r}")
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


class CenterCropResize:
    """Callable transform: PIL image → uint8 ``(C, size, size)`` tensor (see the module docstring)."""

    def __init__(self, size: int, flip: bool = False):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"CenterCropResize: size must be an int >= 1, got {size!r}")
        self.size, self.flip = size, bool(flip)

    def __repr__(self) -> str:
        return f"CenterCropResize(size={self.size}, flip={self.flip})"

    def __call__(self, img) -> torch.Tensor:
        import numpy as np

        img = center_crop_resize(img, self.size)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        out = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        if self.flip and bool(torch.rand(()) < 0.5):
            out = out.flip(-1)
        return out

"""Input checks shared by the white-box tools: a model fed images smaller than the size it was built for.

A CRATE interpolates its position embedding to any grid, so a 224²/16 model accepts a 32² image — and runs on a
2×2 patch grid, which is almost never what was meant (the official model silently sliced its positions
instead). :func:`warn_if_small` says so; ``resize_to`` models resize their inputs themselves and are exempt.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["warn_if_small"]


def warn_if_small(model, images: torch.Tensor, where: str = "tractable.whitebox") -> bool:
    """Warn (and return True) if ``images`` are smaller than the model's ``image_size`` in height or width."""
    if getattr(model, "resize_to", None) is not None or not isinstance(images, torch.Tensor) or images.dim() != 4:
        return False
    size = getattr(model, "image_size", None)
    if size is None:
        return False
    H, W = images.shape[-2:]
    if H >= size[0] and W >= size[1]:
        return False
    P = model.patch_size
    warnings.warn(f"{where}: {H}×{W} inputs are smaller than the {size[0]}×{size[1]} the model "
                  f"{getattr(model, 'name', type(model).__name__)} was built for: it runs on a {H // P}×{W // P} "
                  f"patch grid instead of {size[0] // P}×{size[1] // P} (positions interpolated down). Resize the "
                  f"images to the model's size (--image-size) unless that is what you want.", stacklevel=3)
    return True

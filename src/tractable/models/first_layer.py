"""``first_layer(model)``: where the first weight layer (TrAct's target) lives.

Models built by :mod:`tractable.models` declare it as ``tract_layer``, a dotted submodule path (``"conv1"``,
``"emb"``, ``"patch_embed.proj"``). Foreign models (torchvision, timm, a user's own) fall back to the first
existing of ``conv1``, ``patch_embed.proj``, ``patch_embed``, ``emb``, ``stem.0``, ``features.0`` that is a
Linear/Conv1d/2d/3d, and otherwise to the first such layer in ``named_modules()`` order.

Wrappers are looked through: ``DistributedDataParallel``/``DataParallel`` (``.module``) and ``torch.compile``
(``._orig_mod``); the returned path is relative to the object passed in, so ``model.get_submodule(path)``
always resolves it. (Our addition to the brief's list: ``patch_embed`` itself, the open-TrAct spelling where
the patch embedding is a bare Conv2d.)
"""
from __future__ import annotations

from typing import Tuple

import torch.nn as nn

__all__ = ["first_layer", "WEIGHT_LAYERS", "FALLBACK_PATHS"]

#: Layer types TrAct can precondition (ConvTranspose is not one of them).
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Conventional first-layer paths tried, in order, for models without ``tract_layer``.
FALLBACK_PATHS = ("conv1", "patch_embed.proj", "patch_embed", "emb", "stem.0", "features.0")


def first_layer(model: nn.Module) -> Tuple[str, nn.Module]:
    """``(path, layer)`` of ``model``'s first weight layer; ``model.get_submodule(path) is layer``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"first_layer: expected an nn.Module, got {type(model).__name__}")
    prefix, inner = _unwrap(model)

    declared = getattr(inner, "tract_layer", None)
    if declared is not None:
        if not isinstance(declared, str) or not declared:
            raise ValueError(f"first_layer: {type(inner).__name__}.tract_layer must be a dotted path, got {declared!r}")
        layer = _resolve(inner, declared)
        if layer is None:
            raise ValueError(
                f"first_layer: {type(inner).__name__}.tract_layer = {declared!r} does not name a submodule"
            )
        if not isinstance(layer, WEIGHT_LAYERS):
            raise ValueError(
                f"first_layer: {type(inner).__name__}.tract_layer = {declared!r} is a {type(layer).__name__}; "
                f"expected one of {', '.join(t.__name__ for t in WEIGHT_LAYERS)}"
            )
        return prefix + declared, layer

    for path in FALLBACK_PATHS:
        layer = _resolve(inner, path)
        if isinstance(layer, WEIGHT_LAYERS):
            return prefix + path, layer
    for path, layer in inner.named_modules():
        if path and isinstance(layer, WEIGHT_LAYERS):
            return prefix + path, layer
    raise ValueError(
        f"first_layer: {type(inner).__name__} has no tract_layer attribute, none of {', '.join(FALLBACK_PATHS)}, "
        f"and no {'/'.join(t.__name__ for t in WEIGHT_LAYERS)} submodule at all"
    )


def _unwrap(model: nn.Module) -> Tuple[str, nn.Module]:
    prefix = ""
    while True:
        if isinstance(model._modules.get("_orig_mod"), nn.Module):  # torch.compile's OptimizedModule
            prefix, model = prefix + "_orig_mod.", model._modules["_orig_mod"]
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel") and isinstance(
            model._modules.get("module"), nn.Module
        ):
            prefix, model = prefix + "module.", model._modules["module"]
        else:
            return prefix, model


def _resolve(model: nn.Module, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None

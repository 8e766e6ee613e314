"""Feature extractors for the Fréchet distance: images (N, C, H, W) → features (N, d).

* :class:`InceptionFeatures` — Inception-v3 pool features (2048-d), i.e. real **FID**, through ``torchmetrics``
  (which needs ``torch-fidelity`` and downloads the FID Inception weights on first use, or finds them in its
  cache). Optional: ``pip install 'torchmetrics[image]' torch-fidelity``. Images are given in [0, 1] (use
  ``denormalize``), rounded to uint8 (as images saved to PNG), grey images repeated to RGB, and resized to
  299×299 by the **reference resize**: the bilinear interpolation of TensorFlow 1.x (``align_corners=False``,
  source coordinate = destination · in/out, no half-pixel offset, no antialiasing) that the original TF FID code
  ran inside its Inception graph and that torch-fidelity reproduces (``interpolate_bilinear_2d_like_tensorflow1x``).
  torchmetrics' ``NoTrainInceptionV3`` defaults to ``antialias=True`` (PyTorch's antialiased, half-pixel bilinear),
  which moves a 32×32 image upscaled to 299² by several grey levels on average; we pass ``antialias=False``.
  :func:`reference_resize` writes that resize out (float64), for checks and for users who preprocess themselves.
* :class:`ClassifierFeatures` — the penultimate activations of a classifier trained on the *same* dataset
  (offline; the runner trains a small CNN for this, see ``tractable fid``). This gives a useful *relative*
  comparison between runs on that dataset, but the numbers are **not comparable to Inception-FID** values.

Any callable ``images → (N, d)`` tensor works as a feature extractor (``frechet_distance`` only sees features).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["FeatureExtractor", "ClassifierFeatures", "InceptionFeatures", "extract_features", "denormalize",
           "reference_resize", "inception_input"]

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo per-channel standardisation: x·std + mean (channels in dim 1)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(shape)
    return x * s + m


class ClassifierFeatures:
    """Activations entering the module ``layer`` of a trained classifier ``model`` (default: its last Linear).

    The model is put in eval mode; features are flattened to (N, d).
    """

    def __init__(self, model: nn.Module, layer: Optional[str] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"ClassifierFeatures: expected an nn.Module, got {type(model).__name__}")
        if layer is None:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("ClassifierFeatures: the model has no Linear layer; pass layer=<submodule path>")
            layer = linears[-1]
        try:
            self.module = model.get_submodule(layer)
        except AttributeError as e:
            raise ValueError(f"ClassifierFeatures: {layer!r} is not a submodule of {type(model).__name__}") from e
        self.model, self.layer = model.eval(), layer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = self.module.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
        try:
            self.model(images)
        finally:
            handle.remove()
        return captured[0].flatten(1).double()


def reference_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)`` of (N, C, H, W) images to size×size, in float64:
    output pixel i reads the source coordinate s = i·H/size, y₀ = ⌊s⌋, y₁ = min(y₀ + 1, H − 1), and
    interpolates (1 − (s − y₀))·x[y₀] + (s − y₀)·x[y₁]; the same along the width."""
    x = x.double()

    def axis(n_in: int):
        s = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = s.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (s - lo.double())

    (r0, r1, fr), (c0, c1, fc) = axis(x.shape[-2]), axis(x.shape[-1])
    rows = x[..., r0, :] * (1 - fr)[:, None] + x[..., r1, :] * fr[:, None]
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (N, 1 or 3, H, W) → what the FID network is given: uint8, 3 channels, unresized."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"InceptionFeatures: expected (N, 1 or 3, H, W) images in [0, 1], got {tuple(images.shape)}")
    x = images.clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255).round().to(torch.uint8)


class InceptionFeatures:
    """Inception-v3 (FID) pool features via ``torchmetrics`` with the reference resize; images in [0, 1]."""

    def __init__(self, feature: int = 2048, device=None):
        import inspect

        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as e:  # torchmetrics or torch-fidelity missing
            raise ImportError("Inception-FID needs torchmetrics with torch-fidelity: pip install "
                              "'torchmetrics[image]' torch-fidelity (the weights are downloaded on first use); "
                              "offline, use the dataset classifier's features (tractable fid --features "
                              "classifier)") from e
        kwargs = {}
        if "antialias" in inspect.signature(NoTrainInceptionV3.__init__).parameters:
            kwargs["antialias"] = False  # the reference (TF 1.x) bilinear resize; older versions always use it
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)], **kwargs)
        if device is not None:
            self.net = self.net.to(device)
        self.net.eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(inception_input(images)).double()


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500,
                     device=None) -> torch.Tensor:
    """``extractor`` over ``images`` in batches (moved to ``device`` when given), concatenated on the CPU
    (float64)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    return torch.cat([extractor(images[i:i + batch_size] if device is None else
                                images[i:i + batch_size].to(device)).double().cpu()
                      for i in range(0, images.shape[0], batch_size)])

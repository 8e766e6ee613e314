"""``convert(model, method, seed=..., **options)``: switch a model to a credit-assignment method, in place.

* ``fa`` / ``usf`` / ``frsf`` / ``brsf`` / ``kp`` with ``granularity="layer"`` (default): every ``nn.Linear`` and
  ``nn.Conv1d/2d/3d`` (except those under ``exclude``) becomes its feedback-alignment version
  (:mod:`tractable.feedback.layers`), drawn from (seed, the layer's qualified name). Refused: models containing
  ``nn.MultiheadAttention`` (``F.multi_head_attention_forward`` reads ``in_proj_weight`` and
  ``out_proj.weight`` directly, so a layer swap would silently do nothing: use explicit q/k/v/o Linears) and
  models with weights read functionally (a ≥2-d Parameter owned by a module that is not a Linear/Conv/
  Embedding/norm layer, e.g. ``F.linear(x, self.w)``), unless their names are listed in ``allow_functional``
  (such weights keep exact BP).
* ``fa`` with ``granularity="block"``: block-level FA on a model with the credit protocol
  (:mod:`tractable.feedback.stream`).
* ``dfa``: DFA through the output hub, on a protocol model (points = embed output and block outputs), on the
  outputs of named modules (``points=[...]``, or the model's ``dfa_points``: the registry's CNNs, ViTs and
  CRATE declare their block outputs), or on a plain chain such as an MLP or LeNet (points = hidden
  activations); see :mod:`tractable.feedback.chain`.

The model's parameter names are unchanged (checkpoints of the converted model load with ``strict=True``);
the feedback matrices are added as buffers (``<layer>.feedback``, ``credit.B_<k>``), so a plain model's
checkpoint loads into a converted one with ``strict=False`` (only those keys missing). The resolved options
are kept as ``model.feedback_options`` (:class:`~tractable.feedback.options.FeedbackOptions`).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from tractable.feedback.chain import attach as attach_chain, is_chain, marked_points
from tractable.feedback.layers import SUPPORTED, FALayer, make_fa
from tractable.feedback.options import FeedbackOptions, resolve_options
from tractable.feedback.stream import StreamCredit

__all__ = ["convert", "is_converted", "feedback_options", "is_protocol_model"]

_LOOKUP = (nn.Embedding, nn.EmbeddingBag)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm) if hasattr(nn, "RMSNorm") else (
    nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
_PROTOCOL = ("embed", "blocks", "readout", "head", "feedback_points")


def is_protocol_model(model: nn.Module) -> bool:
    """Whether ``model`` has the members of the credit protocol (``embed``, ``blocks``, ``readout``, ``head``,
    ``feedback_points``) and delegates its forward to ``model.credit``."""
    return all(hasattr(model, a) for a in _PROTOCOL)


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` already uses a credit-assignment method of this package."""
    return getattr(model, "feedback_options", None) is not None or any(
        isinstance(m, FALayer) for m in model.modules())


def feedback_options(model: nn.Module) -> FeedbackOptions:
    """The options ``model`` was converted with (ValueError if it was not)."""
    opts = getattr(model, "feedback_options", None)
    if opts is None:
        raise ValueError(f"{type(model).__name__} was not converted with tractable.feedback.convert")
    return opts


def convert(model: nn.Module, method: str = "fa", *, seed: int = 0, **options: Any) -> nn.Module:
    """Switch ``model`` to ``method`` in place and return it (see the module docstring and
    :mod:`tractable.feedback.options` for the options). Convert before creating the optimizer (KP adds
    Parameters) and before ``DistributedDataParallel``; every rank must use the same ``seed``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    opts = resolve_options(method, seed, **options)
    if is_converted(model):
        raise ValueError(f"convert: {type(model).__name__} is already converted "
                         f"({getattr(model, 'feedback_options', None) or 'feedback-alignment layers'}); "
                         "convert a fresh model")
    if opts.kind == "layer":
        _convert_layers(model, opts)
    else:
        _attach_credit(model, opts)
    model.feedback_options = opts
    return model


def _attach_credit(model: nn.Module, opts: FeedbackOptions) -> None:
    what = "block-level FA" if opts.kind == "block" else "DFA"
    if "credit" in model._modules and model._modules["credit"] is not None:
        raise ValueError(f"convert: {type(model).__name__} already has a 'credit' submodule")
    if is_protocol_model(model):
        if opts.points:
            raise ValueError(f"convert: {type(model).__name__} has the credit protocol, whose feedback points are "
                             "its embed and block outputs (feedback_points()); points=[...] is for other models")
        model.credit = StreamCredit(model, opts)
        return
    if opts.kind == "dfa":
        points = opts.points or marked_points(model)
        if points or is_chain(model):
            if opts.placement != "pre_ln":
                raise ValueError("DFA through hooks (a chain or marked points) sends the signal to the point "
                                 f"itself; placement={opts.placement!r} needs a model with the credit protocol")
            attach_chain(model, opts, points or None)
            return
    missing = [a for a in _PROTOCOL if not hasattr(model, a)]
    hint = (" or, for DFA, feedback points: points=[module names] (or a dfa_points attribute on the model), or a "
            "plain chain (nn.Sequential of Linear/Conv and activations, or a class with feedback_chain = True)") \
        if opts.kind == "dfa" else ""
    raise ValueError(f"convert(method={opts.method!r}): {what} needs feedback points: a model with the credit "
                     f"protocol (embed, blocks, readout, head, feedback_points(); see tractable.models.credit){hint}. "
                     f"{type(model).__name__} has no {', '.join(missing)}")


def _excluded(name: str, exclude) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def _convert_layers(model: nn.Module, opts: FeedbackOptions) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            raise TypeError(
                f"feedback alignment cannot convert nn.MultiheadAttention ({name or 'the model'}): its forward "
                "(F.multi_head_attention_forward) reads in_proj_weight and out_proj.weight directly, so swapping "
                "its layers would silently keep exact backpropagation. Use attention with explicit q/k/v/o "
                "nn.Linear layers and F.scaled_dot_product_attention (e.g. tractable.models.SelfAttention), or "
                "pass exclude=[...] to keep that module on BP")
    known = set(opts.exclude)
    names = {n for n, _ in model.named_modules()}
    bad = sorted(e for e in known if e not in names)
    if bad:
        raise ValueError(f"convert: exclude names {bad} are not submodules of {type(model).__name__}")
    converted = []
    for name, m in list(model.named_modules()):
        if _excluded(name, opts.exclude) or not isinstance(m, SUPPORTED):
            continue
        make_fa(m, method=opts.method, seed=opts.seed, name=name or "layer", feedback_init=opts.feedback_init,
                feedback_scale=opts.feedback_scale)
        converted.append(name)
    functional = []
    for mname, m in model.named_modules():
        if isinstance(m, SUPPORTED + _LOOKUP + _NORMS) or _excluded(mname, opts.exclude):
            continue
        for pname, p in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if p.dim() >= 2 and p.shape[0] > 1 and full not in opts.allow_functional:
                functional.append(f"{full} {tuple(p.shape)}")
    if functional:
        raise TypeError(f"feedback alignment: {type(model).__name__} has weights read functionally (not through "
                        f"nn.Linear/nn.Conv), which a layer swap cannot reach: {', '.join(functional)}. Wrap them "
                        "in nn.Linear/nn.Conv modules, or list them in allow_functional=[...] to keep exact BP "
                        "for them")
    if not converted:
        raise ValueError(f"convert: {type(model).__name__} has no nn.Linear/nn.Conv layer to convert "
                         f"(exclude={list(opts.exclude)})")

"""Released CRATE / CRATE-MAE checkpoints as data (timm-style ``pretrained_cfg``): which file goes with which
builder and which options — λ included, because no state dict stores η or λ.

Each :class:`PretrainedCRATE` names the builder, the keyword arguments that rebuild the network the file was
trained as, the key prefixes the file holds outside our (= the official) module tree, and where the file was
published. :func:`load_pretrained` builds and loads one strictly (every other missing or unexpected key is an
error); :func:`match_pretrained` recognises a released file by its name, so the commands need no ``--model``
for it.

Only two files were released with the papers (CRATE issues #1, #3, #8): CRATE-S/16 on ImageNet-1K (the README's
Google-Drive link, now dead and re-hosted by a community member, issue #30) and CRATE-MAE-B (``lmd5.0``: trained
with ISTA λ = 5, while the official module's default is 0.5). The emergence notebooks load ``crate-demo.pth``
(``CRATE_base_demo``: d 768, 6 heads of d_h 128, patch 8, a 768 → 768 ``mlp_head`` and a top-level ``head``
Linear(768 → 21,842) that is not part of the CRATE module tree) and define ``CRATE_small_21k`` /
``CRATE_base_21k`` shapes (patch 8, 21,842 classes), which are our ``crate_tiny_8`` / ``crate_base_8`` shapes —
the notebooks' "small" is d 384. No other size was released; CRATE-α's weights are another architecture.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch.nn as nn

__all__ = ["PretrainedCRATE", "PRETRAINED", "load_pretrained", "match_pretrained", "pretrained_table",
           "lambda_from_filename"]


@dataclass(frozen=True)
class PretrainedCRATE:
    """One released checkpoint layout: ``builder(**kwargs)`` + ``drop_keys`` loads ``file`` strictly."""

    tag: str
    builder: str
    kwargs: Dict[str, object]
    file: Optional[str]  # the released file name; None: the layout of a notebook preset with no public file
    source: str
    drop_keys: Tuple[str, ...] = ()
    notes: str = ""
    wrapper: str = "state_dict"  # the top-level dict the weights sit in (read_state_dict unwraps it)


PRETRAINED: Dict[str, PretrainedCRATE] = {p.tag: p for p in (
    PretrainedCRATE(
        "crate_small.in1k", "crate_small", {"num_classes": 1000, "image_size": 224, "eta": 0.1, "lam": 0.1}, None,
        "CRATE README, 'Pre-trained Checkpoints (ImageNet-1K)', CRATE-S download link (re-hosted: CRATE issue #30)",
        notes="main.py format: {'epoch', 'arch', 'state_dict' (module.-prefixed), 'best_acc1', 'optimizer', "
              "'scheduler'}; the file name is whatever the download gives: pass --model crate_small"),
    PretrainedCRATE(
        "crate_base_demo.in21k", "crate",
        {"dim": 768, "depth": 12, "heads": 6, "dim_head": 128, "patch_size": 8, "image_size": 224,
         "num_classes": 768, "eta": 0.1, "lam": 0.1}, "crate-demo.pth",
        "crate-emergence notebooks (CRATE_base_demo; CRATE issue #30)", drop_keys=("head.",),
        notes="mlp_head = LN → Linear(768 → 768); the top-level head.* (Linear 768 → 21,842) is dropped, so the "
              "model outputs the 768-d pre-logits (the notebooks use the encoder only)"),
    PretrainedCRATE(
        "crate_small_21k", "crate_tiny_8", {"num_classes": 21842, "image_size": 224, "eta": 0.1, "lam": 0.1}, None,
        "crate-emergence notebooks (CRATE_small_21k preset: d 384, 6 heads, patch 8)",
        notes="the notebooks' 'small' is our tiny shape (d 384); no public file is known"),
    PretrainedCRATE(
        "crate_base_21k", "crate_base_8", {"num_classes": 21842, "image_size": 224, "eta": 0.1, "lam": 0.1}, None,
        "crate-emergence notebooks (CRATE_base_21k preset: d 768, 12 heads, patch 8)",
        notes="no public file is known"),
    PretrainedCRATE(
        "mae_crate_base.in1k_lmd5", "mae_crate_base", {"image_size": 224, "eta": 0.1, "lam": 5.0},
        "crate-mae-base-lmd5.0-checkpoint-799.pth",
        "CRATE README, 'Pre-trained Checkpoints (ImageNet-1K)', CRATE-MAE-B link; loaded by the crate-mae notebook",
        wrapper="model",
        notes="MAE-codebase format {'model', 'optimizer', 'epoch', 'scaler', 'args' (argparse.Namespace)}; "
              "trained with λ = 5 (file name lmd5.0), not the module default 0.5"),
)}


def lambda_from_filename(path) -> Optional[float]:
    """The ISTA λ a CRATE-MAE file name states (``…lmd5.0…`` → 5.0), or None."""
    m = re.search(r"lmd(\d+(?:\.\d+)?)", Path(str(path)).name)
    return float(m.group(1)) if m else None


def match_pretrained(path) -> Optional[PretrainedCRATE]:
    """The released layout whose file name is ``path``'s, or None."""
    name = Path(str(path)).name
    for p in PRETRAINED.values():
        if p.file is not None and p.file == name:
            return p
    return None


def load_pretrained(tag: str, path, **overrides) -> nn.Module:
    """Build the network of the released checkpoint ``tag`` (see :data:`PRETRAINED`) and load ``path`` strictly.

    ``overrides`` replace builder options that do not change the weights' shapes (``image_size`` with
    position interpolation, ``pos_interp``, ``attn_impl``, ...). Changing ``lam``/``eta`` is allowed but warned
    about nowhere else: the released file was trained with the table's values.
    """
    from tractable.models import create_model
    from tractable.models.crate import CRATE, load_crate_checkpoint

    if tag not in PRETRAINED:
        raise ValueError(f"load_pretrained: unknown tag {tag!r}; released layouts: {', '.join(PRETRAINED)}")
    p = PRETRAINED[tag]
    kwargs = {**p.kwargs, **overrides}
    model = create_model(p.builder, **kwargs)
    load_crate_checkpoint(model, path, drop_keys=p.drop_keys, interpolate_pos=isinstance(model, CRATE))
    return model


def pretrained_table() -> str:
    """The Markdown table of :data:`PRETRAINED` (docs/crate.md prints it)."""
    lines = ["| tag | file | builder | options | keys dropped | source |", "|---|---|---|---|---|---|"]
    for p in PRETRAINED.values():
        opts = ", ".join(f"{k}={v}" for k, v in p.kwargs.items())
        lines.append(f"| `{p.tag}` | {f'`{p.file}`' if p.file else '—'} | `{p.builder}` | {opts} | "
                     f"{', '.join(f'`{k}*`' for k in p.drop_keys) or '—'} | {p.source} |")
    return "\n".join(lines)

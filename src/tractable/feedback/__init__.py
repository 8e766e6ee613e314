"""Credit assignment without weight transport: FA, DFA, sign symmetry and Kolen-Pollack in one ordinary loop.

Every method here lives in the autograd graph (custom ``torch.autograd.Function`` s), so a training loop keeps
**one optimizer and one** ``loss.backward()``: no per-block optimizers, no nested backward, no side effects in
backward. Row-vector convention: a Linear is y = x Wᵀ, backpropagation sends g_x = g W.

* **Layer-level FA** (Lillicrap et al. 2016): g_x = g B with a fixed random B of W's shape; g_W = gᵀx exact.
  ``FALinear``, ``FAConv1d/2d/3d``, or ``convert(model, "fa")`` for every Linear/Conv in place.
* **Sign symmetry** (Liao et al. 2016; Xiao et al. 2018): ``usf`` B = s·sign(W), ``frsf`` |R|⊙sign(W) with R
  fixed, ``brsf`` with R redrawn by the layer once per optimizer step (no call needed; :func:`resample_` for
  explicit control). **Kolen-Pollack** (Akrout et al. 2019):
  ``kp``, B learned with W's gradient, so W − B decays under weight decay (:func:`check_kp_decay` warns when
  the optimizer gives B none).
* **Block-level FA** (``convert(model, "fa", granularity="block")``): on a residual stream
  h_{l+1} = h_l + f_l(h_l), the block's Jacobian is replaced by B_l ∈ ℝ^{d×d} while the identity path stays
  exact: the signal at h_l is g_{l+1} + g_{l+1} B_l; each block is trained by BP from its output signal.
* **DFA** (Nøkland 2016, ``convert(model, "dfa")``): one output hub carries the *true* e = ∂L/∂logits (any loss,
  its reduction included) to every feedback point k as a_k = e B_k, B_k ∈ ℝ^{C×D_k}; the stream is detached, so
  block l is trained by a_{l+1} alone and the head by exact BP. Works on any feed-forward model: protocol models
  (:mod:`.stream`), plain chains such as an ``nn.Sequential`` LeNet (full C·H·W feedback on feature maps) and
  the outputs of marked modules (``points=[...]`` or the model's ``dfa_points``; the registry's CNNs, ViTs and
  CRATE declare theirs), see :mod:`.chain`. Default B_k ~ N(0, 0.01/D_k) so that ‖a_k‖ ≈ 0.1‖e‖: a scale
  that trains under plain SGD with momentum (:mod:`.options` says why).

Feedback matrices are persistent buffers drawn eagerly on the CPU from a generator seeded by (seed, CRC32 of
the layer/point name): identical on every device and DDP rank, saved in the ``state_dict``, regenerable
(:func:`verify_feedback`, :func:`feedback_checksum`, :func:`check_same_on_ranks`). Injection happens only while
the model trains under grad; :func:`bp_mode` switches everything to plain backpropagation (for BP reference
gradients on the model's own forward). ``compat="seed"`` reproduces the method choices of the FA evaluation
protocol's reference code (block granularity without identity, per-sample RMS normalisation, shared B_0).

>>> import torch, torch.nn as nn, tractable.feedback as fb
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> _ = fb.convert(model, "dfa", seed=0)           # or "fa", "usf", "frsf", "brsf", "kp"
>>> loss = nn.functional.cross_entropy(model(torch.randn(5, 8)), torch.tensor([0, 1, 2, 3, 0]))
>>> loss.backward()                                 # one backward; the optimizer is the usual one
"""
from tractable.feedback.banks import (
    FeedbackMismatch,
    check_same_on_ranks,
    draw,
    feedback_checksum,
    feedback_tensors,
    stable_seed,
    verify_feedback,
)
from tractable.feedback.chain import ChainDFA, is_chain
from tractable.feedback.convert import convert, feedback_options, is_converted, is_protocol_model
from tractable.feedback.functions import DFAHub, FABridge, FAConvFn, FALinearFn, NormGrad
from tractable.feedback.layers import (
    FAConv1d,
    FAConv2d,
    FAConv3d,
    FALayer,
    FALinear,
    fa_layers,
    check_kp_decay,
    is_fa_layer,
    resample_,
)
from tractable.feedback.options import METHODS, FeedbackOptions, resolve_options
from tractable.feedback.stream import StreamCredit
from tractable.models.credit import bp_mode

__all__ = [
    # conversion
    "convert", "is_converted", "feedback_options", "is_protocol_model", "is_chain", "METHODS",
    "FeedbackOptions", "resolve_options",
    # layers and modules
    "FALinear", "FAConv1d", "FAConv2d", "FAConv3d", "FALayer", "fa_layers", "is_fa_layer", "resample_", "check_kp_decay",
    "StreamCredit", "ChainDFA",
    # autograd Functions
    "FALinearFn", "FAConvFn", "FABridge", "DFAHub", "NormGrad",
    # feedback matrices
    "draw", "stable_seed", "feedback_tensors", "feedback_checksum", "verify_feedback", "check_same_on_ranks",
    "FeedbackMismatch",
    # reference gradients
    "bp_mode",
    # the FA evaluation protocol and its metrics (loaded on first use)
    "FAProtocol", "metrics", "protocol",
]


def __getattr__(name):
    """``FAProtocol``, ``metrics`` and ``protocol`` are imported on first use (they are not needed to train)."""
    import importlib

    if name in ("metrics", "protocol"):
        return importlib.import_module(f"tractable.feedback.{name}")
    if name == "FAProtocol":
        return importlib.import_module("tractable.feedback.protocol").FAProtocol
    raise AttributeError(f"module 'tractable.feedback' has no attribute {name!r}")

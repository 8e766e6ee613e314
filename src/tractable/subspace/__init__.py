"""Neural-network subspaces (Wortsman et al., *Learning Neural Network Subspaces*, ICML 2021): lines, curves and
simplexes of any ``nn.Module``, trained in one run.

Math. Every selected tensor keeps K stored points ω₀…ω_{K−1}; the network at a point with coefficients c runs
with ``w = Σ_i c_i ω_i``, so ∂L/∂ω_i = c_i · ∂L/∂w and every stored point trains at every step:

* line (K = 2): c(α) = [1 − α, α], α ~ U[0, 1] during training, midpoint α = ½;
* curve (quadratic Bezier, K = 3, [start, control, end]): c(α) = [(1−α)², 2α(1−α), α²]; the control point is
  trainable; at α = ½ the network is ¼ω₀ + ½θ + ¼ω₁;
* simplex (k vertices): c = t, t ~ Dirichlet(1,…,1) (t = E/ΣE, E_i ~ Exp(1)); centroid t_i = 1/k.

Regulariser (paper Eq. 3): R = β · ⟨ω_i, ω_j⟩² / (‖ω_i‖² ‖ω_j‖²) for one random pair i ≠ j, where ω_i is
the concatenation of stored point i over all tensors with ndim ≥ 2 not owned by a norm layer (norm parameters
and biases excluded). BatchNorm running statistics collected during training describe a mixture of networks, so they
are recomputed (cumulative average over training batches, as ``torch.optim.swa_utils.update_bn``) for every
evaluated point.

Storage and the one weight path. A tensor's K stored points are one Parameter of shape (K, *shape); reading the
weight mixes them in one operator (``torch.lerp`` for K = 2) and the backward writes their gradient c ⊗ ∂L/∂w in
one more (:mod:`~tractable.subspace.parametrization`). The regulariser's gradient is a K × K matrix S applied as
S · E (:mod:`~tractable.subspace.regularizer`); autograd adds the two. One fast path, behind
``Subspace.mix_all`` (on by default): a forward pre-hook mixes every tensor of the model in one node before the
forward, bit-identical to the per-tensor path. Activation checkpointing, ``torch.compile``, EMA copies
(:func:`subspace_of`), LSTM/GRU and shape-based parameter groups (:func:`point_shape`) work on a converted model.

Usage in your own loop::

    import tractable.subspace as ts

    model = make_model()
    sub = ts.convert(model, make_model, kind="line")          # before the optimizer's first step
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step, (x, y) in enumerate(loader):
        sub.sample(torch.Generator().manual_seed(seed * 1_000_003 + step))   # same α on every DDP rank
        loss = F.cross_entropy(model(x), y) + sub.regularizer(beta=1.0)
        opt.zero_grad(); loss.backward(); opt.step()
    sub.set_point(0.5); sub.recompute_bn(train_loader)       # the midpoint, with its own BN statistics
    plain = sub.export(0.5)                                    # an ordinary model (original state_dict keys)

Checkpoints: ``model.state_dict()`` only (``torch.save(model)`` is refused for parametrized modules); restore by
converting a fresh model the same way and ``load_state_dict(..., strict=True)``.
"""
from tractable.subspace.batchnorm import bn_buffers, load_bn_buffers, recompute_bn_stats
from tractable.subspace.convert import (
    NORM_TYPES,
    Subspace,
    convert,
    is_subspace_model,
    point_shape,
    subspace_of,
)
from tractable.subspace.evaluate import (
    alpha_grid,
    evaluate_grid,
    evaluate_models,
    evaluate_point,
    evaluate_simplex,
    predict,
)
from tractable.subspace.geometry import KINDS, bezier_coeffs, line_coeffs, point_coeffs, sample_coeffs
from tractable.subspace.metrics import accuracy, classification_metrics, combine_logits, ece, nll, tv_distance

__all__ = [
    "convert",
    "Subspace",
    "is_subspace_model",
    "subspace_of",
    "point_shape",
    "NORM_TYPES",
    "KINDS",
    "line_coeffs",
    "bezier_coeffs",
    "point_coeffs",
    "sample_coeffs",
    "recompute_bn_stats",
    "bn_buffers",
    "load_bn_buffers",
    "predict",
    "alpha_grid",
    "evaluate_point",
    "evaluate_grid",
    "evaluate_simplex",
    "evaluate_models",
    "accuracy",
    "nll",
    "ece",
    "tv_distance",
    "combine_logits",
    "classification_metrics",
]

"""Models with the credit-assignment protocol: ``resmlp``, ``resmlp_d512_l2``, ``vit_mini``, ``small_resnet_credit``.

These are the architectures of the feedback-alignment evaluation protocol (Hao et al., NeurIPS 2026 E&D
submission) rebuilt so that every member a learning rule or a diagnostic needs is explicit. The network is a
residual stream owned by the model:

    h_0 = embed(x);   h_{l+1} = h_l + f_l(h_l)  (l = 0 … L−1);   z = readout(h_L);   logits = head(z)

with ``f_l = blocks[l](h_l)`` **the residual branch only** (never h + f). ``residual_add=False`` (ResMLP only) is
the separate, explicit non-residual architecture h_{l+1} = f_l(h_l).

Protocol (:class:`CreditModel`), identical for every model here:

* ``embed(x) → h_0`` in the model's layout: ``vec`` (N, d), ``tokens`` (N, T, d) or ``map`` (N, C, H, W);
* ``blocks`` — an ``nn.ModuleList``; ``blocks[l](h)`` returns f_l;
* ``readout(h_L) → z`` — identity (ResMLP), CLS token (ViT) or global mean pool (ResNet);
* ``head(z) → logits`` — terminal LayerNorm (ResMLP, ViT) + Linear ``head.fc``;
* ``forward(x, return_hidden=False)`` — logits, or ``(logits, [h_0 … h_L])`` **from the same forward** (under
  grad the hiddens stay in the graph, so ``torch.autograd.grad(loss, hiddens)`` is the exact BP gradient);
* ``forward_from(k, h) → logits`` — blocks k … L−1, readout and head applied to a stream state h at point k;
* ``feedback_points()`` — the points k = 0 … L (point 0 is the embed output, point l+1 the output of block l)
  with their per-sample shape and layout.

Extension point for credit-assignment methods. A method may attach a module as ``model.credit`` (a submodule,
so its buffers — feedback matrices — are saved in the ``state_dict`` under ``credit.*``). While
``model.training and torch.is_grad_enabled()`` and the model is not in :func:`bp_mode`, ``forward`` delegates
to ``model.credit(model, x, return_hidden=...)``, which must return the same values as the plain forward (it
only changes what flows backward). :func:`bp_mode` switches every module that declares a ``_bp_mode``
attribute (this class does; so may feedback layers) to plain backpropagation for the duration of a ``with``
block, so that diagnostics take the BP reference by autograd on the model's own forward.

Baselines: ``depth=0`` is the shallow model (embed → readout → head; the ViT's reads out the mean token, since
its CLS token alone does not depend on the input without blocks); ``freeze="blocks"`` keeps the blocks at
their initialisation (``requires_grad=False``, BatchNorm in eval mode whatever ``train()`` says) and
``freeze="embed_blocks"`` also freezes the embedding (only the head learns: the head-only baseline).

Registered models (defaults as in the protocol's audit; every one takes ``num_classes``, ``in_channels``,
``image_size`` and works for any input size and channel count):

* ``resmlp`` — flatten → ``embed.proj`` Linear(in, d) → L pre-LN blocks f = fc2(GELU(fc1(LN h))) with fc2 ~
  N(0, w2_std²), zero bias (w2_std 0.01) → identity readout → ``head`` = LN + Linear. d = 256, L = 4
  (1,318,154 parameters for 3×32×32 → 10). ``input_size`` (1-D signals) or ``in_features`` override the
  flattened width.
* ``resmlp_d512_l2`` — the same with d = 512, L = 2.
* ``vit_mini`` — 4×4 patch Conv2d ``embed.proj`` → tokens, a CLS token and a learned positional embedding
  (both trunc-normal std 0.02) → pre-LN blocks whose branch is f = a + m(LN(h + a)) with a = attn(LN h)
  (explicit q/k/v/o Linears + ``F.scaled_dot_product_attention``, MLP ratio 4) → CLS readout → LN + Linear.
  d = 128, 4 heads, 4 blocks.
* ``small_resnet_credit`` — conv3×3 stem + BN + ReLU (``embed``) → blocks at constant width and resolution →
  global mean pool → Linear. ``preact=False``: the post-activation BasicBlock relu(h + BN(conv(relu(BN(conv h)))))
  wrapped as a branch, f = relu(h + F(h)) − h; ``preact=True``: the pre-activation branch
  f = conv(relu(BN(conv(relu(BN h))))). Width 64, 4 blocks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.registry import register_model
from tractable.models.vit import SelfAttention

__all__ = [
    "CreditModel",
    "FeedbackPoint",
    "ResMLP",
    "ResMLPBlock",
    "ViTMini",
    "ViTMiniBlock",
    "SmallResNetCredit",
    "PostActBranch",
    "PreActBranch",
    "Readout",
    "ClassifierHead",
    "bp_mode",
    "is_credit_model",
]

LAYOUTS = ("vec", "tokens", "map")
FREEZE = ("none", "blocks", "embed_blocks")


@dataclass(frozen=True)
class FeedbackPoint:
    """Feedback point ``index`` (0 = embed output, l+1 = output of block l): ``name``, the per-sample ``shape``
    of h_k and its ``layout`` (``vec`` (d,), ``tokens`` (T, d), ``map`` (C, H, W)); ``dim`` is the feature
    width (d or C)."""

    index: int
    name: str
    shape: Tuple[int, ...]
    layout: str

    @property
    def dim(self) -> int:
        return self.shape[-1] if self.layout in ("vec", "tokens") else self.shape[0]


@contextlib.contextmanager
def bp_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every module of ``model`` that declares a ``_bp_mode`` attribute runs as plain
    backpropagation (no injected feedback). The previous values are restored on exit, also after an error."""
    saved = []
    for m in model.modules():
        if hasattr(m, "_bp_mode"):
            saved.append((m, m.__dict__.get("_bp_mode", None)))
            m._bp_mode = True
    try:
        yield model
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("_bp_mode", None)  # back to the class attribute
            else:
                m._bp_mode = old


def is_credit_model(model) -> bool:
    """True if ``model`` has the members of the credit-assignment protocol."""
    return all(hasattr(model, a) for a in ("embed", "blocks", "readout", "head", "forward_from", "feedback_points"))


class Readout(nn.Module):
    """h_L → z: ``identity`` (vectors), ``cls`` (token 0 of (N, T, d)), ``mean_pool`` (mean over H, W of maps) or
    ``token_mean`` (mean over the tokens of (N, T, d))."""

    KINDS = ("identity", "cls", "mean_pool", "token_mean")

    def __init__(self, kind: str):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"Readout: kind must be one of {', '.join(map(repr, self.KINDS))}; got {kind!r}")
        self.kind = kind

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            return h[:, 0]
        if self.kind == "mean_pool":
            return h.mean(dim=(-2, -1))
        if self.kind == "token_mean":
            return h.mean(dim=1)
        return h

    def extra_repr(self) -> str:
        return self.kind


class ClassifierHead(nn.Module):
    """z → logits: optional terminal LayerNorm ``norm`` then Linear ``fc``."""

    def __init__(self, dim: int, num_classes: int, *, norm: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(z))


class CreditModel(nn.Module):
    """Base class: the residual stream, ``forward``/``forward_from``/``feedback_points`` and the baselines.

    Subclasses set ``embed``, ``blocks``, ``readout``, ``head`` and ``point_shape``/``layout`` and call
    :meth:`_finish_init`.
    """

    _bp_mode = False
    freeze = "none"
    residual_add = True
    layout = "vec"
    point_shape: Tuple[int, ...] = ()

    def _finish_init(self, freeze: str) -> None:
        if freeze not in FREEZE:
            raise ValueError(f"{self.model_name}: freeze must be one of {', '.join(map(repr, FREEZE))}; got {freeze!r}")
        self.freeze = freeze
        frozen = self.frozen_modules()
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    # -- structure ---------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.blocks)

    def frozen_modules(self) -> List[nn.Module]:
        """The modules kept at initialisation by ``freeze``."""
        if self.freeze == "blocks":
            return [self.blocks]
        if self.freeze == "embed_blocks":
            return [self.embed, self.blocks]
        return []

    def feedback_points(self) -> Tuple[FeedbackPoint, ...]:
        """Points k = 0 … L: 0 is the embed output (``embed``), l+1 the output of block l (``blocks.l``)."""
        names = ["embed"] + [f"blocks.{l}" for l in range(self.depth)]
        return tuple(FeedbackPoint(k, n, tuple(self.point_shape), self.layout) for k, n in enumerate(names))

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules():  # frozen parts keep their BatchNorm statistics fixed
            m.eval()
        return self

    # -- forward -----------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:  # overridden where the input shape is constrained
        pass

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        credit = self._modules.get("credit")
        if credit is not None and self.training and torch.is_grad_enabled() and not self._bp_mode:
            return credit(self, x, return_hidden=return_hidden)
        return self.forward_plain(x, return_hidden=return_hidden)

    def forward_plain(self, x: torch.Tensor, return_hidden: bool = False):
        """The model's forward without any attached credit wiring (what :func:`bp_mode` runs)."""
        self._check_input(x)
        h = self.embed(x)
        hiddens = [h] if return_hidden else None
        for block in self.blocks:
            f = block(h)
            h = h + f if self.residual_add else f
            if return_hidden:
                hiddens.append(h)
        logits = self.head(self.readout(h))
        return (logits, hiddens) if return_hidden else logits

    def step(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """h_{l+1} from h_l (the stream rule: h + f_l(h), or f_l(h) when ``residual_add`` is False)."""
        f = self.blocks[l](h)
        return h + f if self.residual_add else f

    def forward_from(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Logits from the stream state ``h`` at point ``k`` (0 … L): blocks k … L−1, readout, head."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= self.depth:
            raise ValueError(f"forward_from: k must be an int in 0..{self.depth} (feedback points), got {k!r}")
        for l in range(k, self.depth):
            h = self.step(l, h)
        return self.head(self.readout(h))


# ============================================================================================== ResMLP
class VecEmbed(nn.Module):
    """Flatten to (N, in_features) → Linear ``proj``."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.in_features = in_features
        self.proj = nn.Linear(in_features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"resmlp: expected {self.in_features} features per sample after flattening, "
                             f"got {x.shape[1]} (input shape {tuple(x.shape)})")
        return self.proj(x)


class ResMLPBlock(nn.Module):
    """Pre-LN residual branch f(h) = fc2(GELU(fc1(LN h))); fc2 ~ N(0, w2_std²), zero bias. Returns f only."""

    def __init__(self, dim: int, hidden: int, w2_std: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.normal_(self.fc2.weight, std=w2_std)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(h))))


class ResMLP(CreditModel):
    """Flatten → ``embed.proj`` → L pre-LN branches on the stream → LN + Linear head."""

    tract_layer = "embed.proj"
    layout = "vec"
    model_name = "resmlp"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 input_size: Optional[int] = None, in_features: Optional[int] = None, dim: int = 256, depth: int = 4,
                 mlp_ratio: float = 1.0, w2_std: float = 0.01, residual_add: bool = True, terminal_norm: bool = True,
                 freeze: str = "none", name: str = "resmlp"):
        super().__init__()
        self.model_name = name
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        image_size = _checks.positive_int(name, "image_size", image_size)
        dim = _checks.positive_int(name, "dim", dim)
        depth = _checks.positive_int(name, "depth", depth, minimum=0)
        if in_features is None:
            spatial = image_size * image_size if input_size is None else _checks.positive_int(name, "input_size",
                                                                                           input_size)
            in_features = in_channels * spatial
        in_features = _checks.positive_int(name, "in_features", in_features)
        _positive_float(name, "mlp_ratio", mlp_ratio)
        _positive_float(name, "w2_std", w2_std, allow_zero=True)
        _bool(name, "residual_add", residual_add)
        _bool(name, "terminal_norm", terminal_norm)
        self.residual_add = residual_add
        self.point_shape = (dim,)
        self.embed = VecEmbed(in_features, dim)
        self.blocks = nn.ModuleList(ResMLPBlock(dim, max(1, int(round(dim * mlp_ratio))), w2_std)
                                    for _ in range(depth))
        self.readout = Readout("identity")
        self.head = ClassifierHead(dim, num_classes, norm=terminal_norm)
        self._finish_init(freeze)


# ============================================================================================== ViT-mini
class TokenEmbed(nn.Module):
    """Conv2d patch embedding ``proj`` (kernel = stride = patch) → tokens, a CLS token and learned positions."""

    def __init__(self, in_channels: int, image_size: int, patch_size: int, dim: int):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.num_tokens = (image_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"vit_mini: expected input (N, C, {self.image_size}, {self.image_size}) "
                             f"(image_size={self.image_size}), got {tuple(x.shape)}")
        t = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed


class ViTMiniBlock(nn.Module):
    """Pre-LN transformer block as a branch: f(h) = a + m(LN(h + a)) with a = attn(LN h), so h + f is the usual
    ``x + attn(LN x)`` followed by ``x + mlp(LN x)``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(h))
        return a + self.fc2(self.act(self.fc1(self.norm2(h + a))))


class ViTMini(CreditModel):
    """Patch tokens + CLS → pre-LN branches → CLS readout → LN + Linear head."""

    tract_layer = "embed.proj"
    layout = "tokens"
    model_name = "vit_mini"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 dim: int = 128, heads: int = 4, depth: int = 4, mlp_ratio: float = 4.0, freeze: str = "none"):
        super().__init__()
        name = self.model_name
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        image_size = _checks.positive_int(name, "image_size", image_size)
        patch_size = _checks.positive_int(name, "patch_size", patch_size)
        dim = _checks.positive_int(name, "dim", dim)
        heads = _checks.positive_int(name, "heads", heads)
        depth = _checks.positive_int(name, "depth", depth, minimum=0)
        _positive_float(name, "mlp_ratio", mlp_ratio)
        if image_size % patch_size:
            raise ValueError(f"{name}: image_size={image_size} must be a multiple of patch_size={patch_size}")
        if dim % heads:
            raise ValueError(f"{name}: dim={dim} must be divisible by heads={heads}")
        self.embed = TokenEmbed(in_channels, image_size, patch_size, dim)
        self.point_shape = (self.embed.num_tokens, dim)
        self.blocks = nn.ModuleList(ViTMiniBlock(dim, heads, max(1, int(round(dim * mlp_ratio))))
                                    for _ in range(depth))
        # without blocks the CLS token never meets the patches (its logits would not depend on the input):
        # the shallow model reads out the mean token instead
        self.readout = Readout("cls" if depth > 0 else "token_mean")
        self.head = ClassifierHead(dim, num_classes, norm=True)
        self._finish_init(freeze)


# ============================================================================================== ResNet
class ConvStem(nn.Module):
    """conv3×3 (bias-free) ``conv`` → BN ``bn`` → ReLU."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"small_resnet_credit: expected an (N, C, H, W) input, got shape {tuple(x.shape)}")
        return F.relu(self.bn(self.conv(x)))


class PostActBranch(nn.Module):
    """The post-activation BasicBlock relu(h + BN(conv(relu(BN(conv h))))) as a branch: returns block(h) − h."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h)))))
        return F.relu(h + r) - h


class PreActBranch(nn.Module):
    """Pre-activation branch f(h) = conv2(relu(BN(conv1(relu(BN h)))))."""

    def __init__(self, width: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(h))))))


class SmallResNetCredit(CreditModel):
    """Conv stem → constant-width residual branches → global mean pool → Linear (no LayerNorm)."""

    tract_layer = "embed.conv"
    layout = "map"
    model_name = "small_resnet_credit"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 64,
                 depth: int = 4, preact: bool = False, freeze: str = "none"):
        super().__init__()
        name = self.model_name
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        image_size = _checks.positive_int(name, "image_size", image_size)
        width = _checks.positive_int(name, "width", width)
        depth = _checks.positive_int(name, "depth", depth, minimum=0)
        _bool(name, "preact", preact)
        self.image_size = image_size
        self.preact = preact
        self.point_shape = (width, image_size, image_size)
        self.embed = ConvStem(in_channels, width)
        branch = PreActBranch if preact else PostActBranch
        self.blocks = nn.ModuleList(branch(width) for _ in range(depth))
        self.readout = Readout("mean_pool")
        self.head = ClassifierHead(width, num_classes, norm=False)
        self._finish_init(freeze)


# ============================================================================================== checks
def _positive_float(model: str, name: str, value, allow_zero: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{model}: {name} must be a {'non-negative' if allow_zero else 'positive'} number, "
                         f"got {value!r}")
    return float(value)


def _bool(model: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{model}: {name} must be True or False, got {value!r}")
    return value


# ============================================================================================== registry
@register_model("resmlp")
def resmlp(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, input_size: Optional[int] = None,
           in_features: Optional[int] = None, dim: int = 256, depth: int = 4, mlp_ratio: float = 1.0,
           w2_std: float = 0.01, residual_add: bool = True, terminal_norm: bool = True,
           freeze: str = "none") -> ResMLP:
    """Pre-LN residual MLP (d=256, L=4) of the FA protocol's primary audit; ``depth=0`` is the shallow model."""
    return ResMLP(num_classes=num_classes, in_channels=in_channels, image_size=image_size, input_size=input_size,
                  in_features=in_features, dim=dim, depth=depth, mlp_ratio=mlp_ratio, w2_std=w2_std,
                  residual_add=residual_add, terminal_norm=terminal_norm, freeze=freeze, name="resmlp")


@register_model("resmlp_d512_l2")
def resmlp_d512_l2(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                   input_size: Optional[int] = None, in_features: Optional[int] = None, dim: int = 512,
                   depth: int = 2, mlp_ratio: float = 1.0, w2_std: float = 0.01, residual_add: bool = True,
                   terminal_norm: bool = True, freeze: str = "none") -> ResMLP:
    """The ResMLP with d=512, L=2 (the protocol paper's representative setting)."""
    return ResMLP(num_classes=num_classes, in_channels=in_channels, image_size=image_size, input_size=input_size,
                  in_features=in_features, dim=dim, depth=depth, mlp_ratio=mlp_ratio, w2_std=w2_std,
                  residual_add=residual_add, terminal_norm=terminal_norm, freeze=freeze, name="resmlp_d512_l2")


@register_model("vit_mini")
def vit_mini(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
             dim: int = 128, heads: int = 4, depth: int = 4, mlp_ratio: float = 4.0,
             freeze: str = "none") -> ViTMini:
    """ViT-mini (patch 4, d=128, 4 heads, 4 blocks) with explicit q/k/v/o attention and branch-only blocks."""
    return ViTMini(num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                   dim=dim, heads=heads, depth=depth, mlp_ratio=mlp_ratio, freeze=freeze)


@register_model("small_resnet_credit")
def small_resnet_credit(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 64,
                        depth: int = 4, preact: bool = False, freeze: str = "none") -> SmallResNetCredit:
    """Constant-width ResNet (width 64, 4 blocks, no downsampling); ``preact=True`` for pre-activation blocks."""
    return SmallResNetCredit(num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width,
                             depth=depth, preact=preact, freeze=freeze)

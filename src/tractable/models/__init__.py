"""Model zoo and registry: ``create_model(name, **kwargs)``, ``list_models()``, ``first_layer(model)``.

Every model built here names its first weight layer (TrAct's target) in ``tract_layer``; :func:`first_layer`
resolves it, and falls back to conventional names for foreign (torchvision/timm/user) models.

>>> from tractable.models import create_model, first_layer
>>> model = create_model("resnet18_tract_cifar", num_classes=10)
>>> first_layer(model)[0]
'conv1'
"""
from tractable.models.registry import create_model, list_models, model_defaults, register_model, unregister_model
from tractable.models.first_layer import FALLBACK_PATHS, WEIGHT_LAYERS, first_layer

# Family modules register their builders on import.
from tractable.models import crate as _crate, crate_mae as _crate_mae  # noqa: F401  (CRATE family)
from tractable.models import resnet20 as _resnet20  # noqa: F401  (subspace family: resnet20_cifar)
from tractable.models import lenet as _lenet  # noqa: F401  (feedback family: lenet)
from tractable.models import dit as _dit, unet as _unet  # noqa: F401  (diffusion family: dit_*, mdit_*, unet_*)
from tractable.models.resnet_cifar import BasicBlock, Bottleneck, CifarResNet
from tractable.models.resnet_small import GELUBasicBlock, SmallResNet
from tractable.models.small import CNN1d, MLP, SmallCNN
from tractable.models.vit import (
    CifarViT,
    FeedForward,
    OpenViT,
    PatchEmbed,
    SelfAttention,
    TransformerBlock,
    patchify,
    sincos_1d,
    sincos_2d,
)
from tractable.models.credit import CreditModel, FeedbackPoint, ResMLP, SmallResNetCredit, ViTMini, bp_mode

__all__ = [
    # registry
    "create_model",
    "list_models",
    "model_defaults",
    "register_model",
    "unregister_model",
    # first-layer contract
    "first_layer",
    "FALLBACK_PATHS",
    "WEIGHT_LAYERS",
    # ResNets
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "GELUBasicBlock",
    "SmallResNet",
    # ViTs
    "CifarViT",
    "FeedForward",
    "OpenViT",
    "PatchEmbed",
    "SelfAttention",
    "TransformerBlock",
    "patchify",
    "sincos_1d",
    "sincos_2d",
    # credit-assignment protocol models
    "CreditModel",
    "FeedbackPoint",
    "ResMLP",
    "SmallResNetCredit",
    "ViTMini",
    "bp_mode",
    # small baselines
    "CNN1d",
    "MLP",
    "SmallCNN",
]

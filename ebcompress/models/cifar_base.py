"""What the CIFAR-style nets share: the timm classifier API, width scaling, init and cfgs.

The three families (:mod:`~ebcompress.models.vgg_cifar`, :mod:`~ebcompress.models.preresnet_cifar`,
:mod:`~ebcompress.models.resnet_cifar`) differ only in their feature extractor. The head, the
initialisation of the network-slimming reference code (Liu et al., ICCV 2017, which the Early-Bird
paper, You et al., ICLR 2020, builds on) and the timm plumbing live here once.

Widths are read from the modules, never stored: torch-pruning shrinks convolutions, norms and the
classifier in place, and ``num_features`` must report the slimmed width afterwards.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg
from torch import nn

from ebcompress.errors import UserError

# The normalisation of the network-slimming reference training script (CIFAR-10 statistics).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

ModelT = TypeVar("ModelT", bound="CifarClassifier")


def scale_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to the nearest integer, at least 1."""
    if width_mult <= 0:
        raise UserError(f"width_mult={width_mult} must be positive (1.0 is the paper's width)")
    return max(1, round(channels * width_mult))


def init_weights(model: nn.Module, bn_gamma: float) -> None:
    """Initialise ``model`` as the network-slimming reference code does.

    Convolutions: He normal with fan-out (``normal(0, sqrt(2 / (k*k*out)))`` in the reference);
    BatchNorm: weight ``bn_gamma`` (0.5 in the reference, which starts the BN-L1 sparsity
    search below saturation), bias 0; Linear: ``normal(0, 0.01)``, bias 0.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, bn_gamma)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            _init_linear(module)


def _init_linear(linear: nn.Linear) -> None:
    nn.init.normal_(linear.weight, 0.0, 0.01)
    nn.init.zeros_(linear.bias)


def classifier(num_features: int, num_classes: int) -> nn.Module:
    """A freshly initialised Linear head, or ``nn.Identity`` for ``num_classes == 0`` (timm)."""
    if num_classes < 0:
        raise UserError(f"num_classes={num_classes} must be >= 0 (0 drops the classifier)")
    if num_classes == 0:
        return nn.Identity()
    head = nn.Linear(num_features, num_classes)
    _init_linear(head)
    return head


class CifarClassifier(nn.Module):
    """timm's classifier API for a feature extractor followed by global pooling and ``fc``.

    Subclasses build their layers, then ``self.fc = classifier(width, num_classes)`` last, and
    implement :meth:`forward_features`. Global average pooling is a spatial mean: at 32x32 it
    equals the reference code's ``AvgPool2d`` over the final map (2x2 for VGG, 8x8 for the
    ResNets), fvcore counts neither, so MAC counts match the reference; unlike a fixed-size
    ``AvgPool2d`` it also works at any other input size.
    """

    fc: nn.Module

    def __init__(self, num_classes: int, in_chans: int, drop_rate: float) -> None:
        super().__init__()
        if in_chans < 1:
            raise UserError(f"in_chans={in_chans} must be >= 1")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate

    @property
    def num_features(self) -> int:
        """Width of the pooled features; follows physical slimming of the network."""
        if isinstance(self.fc, nn.Linear):
            return self.fc.in_features
        # Without a Linear head the last BatchNorm normalises the features in every family.
        norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        return norms[-1].num_features

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a new one for ``num_classes`` over the current feature width."""
        width = self.num_features
        self.fc = classifier(width, num_classes)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """A timm pretrained cfg for a CIFAR net without weights (32x32, CIFAR-10 statistics)."""
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "classifier": "fc",
        "license": "mit",
        **kwargs,
    }


def build_cifar_model(
    model_cls: type[ModelT], variant: str, pretrained: bool, **kwargs: Any
) -> ModelT:
    """timm's ``build_model_with_cfg`` for weightless nets; the cfg then describes the model built.

    timm's cfg normally describes pretrained weights. None exist here, so ``num_classes`` and
    the channel count of ``input_size`` are set to the model's; for ``in_chans != 3`` the mean
    and std become the CIFAR channel averages repeated ``in_chans`` times.
    """
    if pretrained:
        raise UserError(f"{variant} has no pretrained weights; create it with pretrained=False")
    model = build_model_with_cfg(model_cls, variant, pretrained=False, **kwargs)
    cfg = model.pretrained_cfg  # the same dict as model.default_cfg
    cfg["num_classes"] = model.num_classes
    cfg["input_size"] = (model.in_chans, *cfg["input_size"][1:])
    for key in ("mean", "std"):
        stats = cfg[key]
        if len(stats) != model.in_chans:
            cfg[key] = (sum(stats) / len(stats),) * model.in_chans
    return model

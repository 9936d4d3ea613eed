"""VGG for CIFAR: the network-slimming variant that the Early-Bird paper prunes.

Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017
(https://arxiv.org/abs/1708.06519), as used by You et al., "Drawing Early-Bird Tickets",
ICLR 2020. Unlike ImageNet VGG (Simonyan & Zisserman, 2014) every 3x3 convolution is bias-free
and followed by BatchNorm and ReLU, the last stage has no max-pool, and there are no hidden FC
layers: global average pooling feeds one Linear. At 32x32 the final map is 2x2, where the
spatial mean equals the reference's ``AvgPool2d(2)``; vgg16_cifar then has 314.6 M forward MACs
under fvcore with BatchNorm in training mode (313.8 M in eval mode, where fvcore counts BN
differently). Inputs of 16x16 and up work (a 28x28 input ends at 1x1).

BatchNorm weights start at 0.5 as in the reference code
(see :func:`~ebcompress.models.cifar_base.init_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ebcompress.models.cifar_base import (
    CifarClassifier,
    build_cifar_model,
    cifar_cfg,
    classifier,
    init_weights,
    scale_width,
)

__all__ = ["VGGCifar"]

# The network-slimming reference cfgs: conv widths, "M" for a 2x2 max-pool.
cfgs: dict[str, list[int | str]] = {
    "vgg11_cifar": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13_cifar": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16_cifar": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
    ],  # fmt: skip
    "vgg19_cifar": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],  # fmt: skip
}


def make_features(cfg: Sequence[int | str], in_chans: int, width_mult: float) -> nn.Sequential:
    """Conv(3x3, no bias)-BN-ReLU per width in ``cfg``, MaxPool2d(2) per "M", in one Sequential."""
    layers: list[nn.Module] = []
    width = in_chans
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = scale_width(int(item), width_mult)
        layers += [
            nn.Conv2d(width, out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        width = out
    return nn.Sequential(*layers)


class VGGCifar(CifarClassifier):
    """Network-slimming VGG: ``features`` (one flat Sequential), global average pool, ``fc``."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        drop_rate: float = 0.0,
        bn_gamma: float = 0.5,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        self.features = make_features(cfg, in_chans, width_mult)
        widths = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]
        self.fc = classifier(widths[-1], num_classes)
        init_weights(self, bn_gamma=bn_gamma)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _create_vgg_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> VGGCifar:
    return build_cifar_model(VGGCifar, variant, pretrained, model_cfg=cfgs[variant], **kwargs)


default_cfgs = generate_default_cfgs(
    {name: cifar_cfg(first_conv="features.0", paper_ids="arXiv:1708.06519") for name in cfgs}
)


@register_model
def vgg11_cifar(pretrained: bool = False, **kwargs: Any) -> VGGCifar:
    """Network-slimming VGG-11 for 32x32 inputs."""
    return _create_vgg_cifar("vgg11_cifar", pretrained=pretrained, **kwargs)


@register_model
def vgg13_cifar(pretrained: bool = False, **kwargs: Any) -> VGGCifar:
    """Network-slimming VGG-13 for 32x32 inputs."""
    return _create_vgg_cifar("vgg13_cifar", pretrained=pretrained, **kwargs)


@register_model
def vgg16_cifar(pretrained: bool = False, **kwargs: Any) -> VGGCifar:
    """Network-slimming VGG-16 for 32x32 inputs, the Early-Bird paper's VGG16."""
    return _create_vgg_cifar("vgg16_cifar", pretrained=pretrained, **kwargs)


@register_model
def vgg19_cifar(pretrained: bool = False, **kwargs: Any) -> VGGCifar:
    """Network-slimming VGG-19 for 32x32 inputs."""
    return _create_vgg_cifar("vgg19_cifar", pretrained=pretrained, **kwargs)

"""ResNet for CIFAR (ResNet-20/32/56/110).

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
(https://arxiv.org/abs/1512.03385), Sec. 4.2: a 3x3 stem conv-BN-ReLU, three stages of ``n``
post-activation basic blocks at widths 16/32/64 (depth ``6n+2``), global average pooling and
one Linear.

Deviation from the paper: where a block changes shape its shortcut is a 1x1 conv + BN
projection (the paper's option B), not the zero-padded identity (option A). The projection
gives torch-pruning a module to slim, so the channels of each residual stage form one clean
coupled group. This adds 2 x 131,072 MACs at 32x32 for full width.

Initialisation: He normal (fan-out) convolutions, BatchNorm weight 1 and bias 0 (the paper's
setting, not network slimming's 0.5; pass ``bn_gamma`` to change it), Linear ``normal(0, 0.01)``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ebcompress.errors import UserError
from ebcompress.models.cifar_base import (
    CifarClassifier,
    build_cifar_model,
    cifar_cfg,
    classifier,
    init_weights,
    scale_width,
)

__all__ = ["ResNetCifar"]

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Option-B shortcut: identity, or 1x1 conv + BN where the shape changes."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_chs),
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_chs: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _projection(in_chs, planes, stride)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.downsample(x))


def blocks_per_stage(depth: int) -> int:
    """``n`` for a CIFAR ResNet of ``depth = 6n + 2`` layers."""
    if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 8 and depth % 6 == 2:
        return (depth - 2) // 6
    raise UserError(
        f"resnet_cifar depth={depth!r} is not valid: use 6n+2 with n >= 1 (e.g. 20, 32, 56, 110)"
    )


class ResNetCifar(CifarClassifier):
    """CIFAR ResNet: ``conv1`` + ``bn1`` + ``act1``, ``layer1..3``, pool, ``fc``."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        drop_rate: float = 0.0,
        bn_gamma: float = 1.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        num_blocks = blocks_per_stage(depth)
        width = scale_width(STAGE_WIDTHS[0], width_mult)
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        stages = []
        for stage_width, stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True):
            planes = scale_width(stage_width, width_mult)
            blocks = []
            for index in range(num_blocks):
                blocks.append(BasicBlock(width, planes, stride if index == 0 else 1))
                width = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = classifier(width, num_classes)
        init_weights(self, bn_gamma=bn_gamma)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def _create_resnet_cifar(variant: str, pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    return build_cifar_model(ResNetCifar, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        name: cifar_cfg(first_conv="conv1", paper_ids="arXiv:1512.03385")
        for name in ("resnet20_cifar", "resnet32_cifar", "resnet56_cifar", "resnet110_cifar")
    }
)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-20 for 32x32 inputs."""
    return _create_resnet_cifar("resnet20_cifar", pretrained, depth=20, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-32 for 32x32 inputs."""
    return _create_resnet_cifar("resnet32_cifar", pretrained, depth=32, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-56 for 32x32 inputs."""
    return _create_resnet_cifar("resnet56_cifar", pretrained, depth=56, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> ResNetCifar:
    """ResNet-110 for 32x32 inputs."""
    return _create_resnet_cifar("resnet110_cifar", pretrained, depth=110, **kwargs)

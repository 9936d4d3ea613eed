"""Pre-activation ResNet for CIFAR, as pruned by network slimming and the Early-Bird paper.

He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016
(https://arxiv.org/abs/1603.05027), in the form of the network-slimming reference code
(Liu et al., ICCV 2017) that You et al., "Drawing Early-Bird Tickets" (ICLR 2020) uses for
PreResNet-101: a 3x3 stem convolution without norm, three stages of pre-activation blocks
(BN-ReLU-conv) at widths 16/32/64 (times 4 at block outputs for bottlenecks), a final BN-ReLU,
global average pooling and one Linear.

Depths: ``6n+2`` below 100 gives basic blocks (two 3x3 convs; 20, 56, ...), ``9n+2`` from 100
gives bottleneck blocks (1x1-3x3-1x1, expansion 4; 101, 164, ...). Projection shortcuts are a
bare 1x1 convolution applied to the block input, as in the reference code. Only standard
``nn`` modules are used (the reference's "channel selection" layers are left out) so that
torch-pruning can trace and slim the network. BatchNorm weights start at 0.5 as in the
reference (see :func:`~ebcompress.models.cifar_base.init_weights`).
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

__all__ = ["PreResNetCifar"]

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """The reference's shortcut: identity, or a 1x1 conv (no norm) where the shape changes."""
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)


class PreActBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut of the block input."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample = _projection(in_chs, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + self.downsample(x)


class PreActBottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4 width), plus the shortcut."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.act3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.downsample = _projection(in_chs, out_chs, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        out = self.conv3(self.act3(self.bn3(out)))
        return out + self.downsample(x)


PreActBlock = type[PreActBasicBlock] | type[PreActBottleneck]


def block_layout(depth: int) -> tuple[PreActBlock, int]:
    """The block type and the number of blocks per stage for a PreResNet of ``depth`` layers."""
    if isinstance(depth, int) and not isinstance(depth, bool):
        if 8 <= depth < 100 and (depth - 2) % 6 == 0:
            return PreActBasicBlock, (depth - 2) // 6
        if depth >= 100 and (depth - 2) % 9 == 0:
            return PreActBottleneck, (depth - 2) // 9
    raise UserError(
        f"preresnet_cifar depth={depth!r} is not valid: use 6n+2 below 100 for basic blocks "
        "(e.g. 20, 56) or 9n+2 from 100 for bottleneck blocks (e.g. 101, 164)"
    )


class PreResNetCifar(CifarClassifier):
    """Pre-activation ResNet: ``conv1``, ``layer1..3``, final ``norm`` + ``act``, pool, ``fc``."""

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        drop_rate: float = 0.0,
        bn_gamma: float = 0.5,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        block, blocks_per_stage = block_layout(depth)
        width = scale_width(STAGE_WIDTHS[0], width_mult)
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        stages = []
        for stage_width, stride in zip(STAGE_WIDTHS, STAGE_STRIDES, strict=True):
            planes = scale_width(stage_width, width_mult)
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(block(width, planes, stride if index == 0 else 1))
                width = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)
        self.fc = classifier(width, num_classes)
        init_weights(self, bn_gamma=bn_gamma)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.act(self.norm(x))


def _create_preresnet_cifar(
    variant: str, pretrained: bool = False, **kwargs: Any
) -> PreResNetCifar:
    return build_cifar_model(PreResNetCifar, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        name: cifar_cfg(first_conv="conv1", paper_ids="arXiv:1603.05027")
        for name in (
            "preresnet_cifar",
            "preresnet20_cifar",
            "preresnet56_cifar",
            "preresnet101_cifar",
            "preresnet164_cifar",
        )
    }
)


@register_model
def preresnet_cifar(pretrained: bool = False, **kwargs: Any) -> PreResNetCifar:
    """PreResNet of any valid ``depth`` (default 56) for 32x32 inputs."""
    return _create_preresnet_cifar("preresnet_cifar", pretrained=pretrained, **kwargs)


@register_model
def preresnet20_cifar(pretrained: bool = False, **kwargs: Any) -> PreResNetCifar:
    """PreResNet-20 (basic blocks) for 32x32 inputs."""
    return _create_preresnet_cifar("preresnet20_cifar", pretrained, depth=20, **kwargs)


@register_model
def preresnet56_cifar(pretrained: bool = False, **kwargs: Any) -> PreResNetCifar:
    """PreResNet-56 (basic blocks) for 32x32 inputs."""
    return _create_preresnet_cifar("preresnet56_cifar", pretrained, depth=56, **kwargs)


@register_model
def preresnet101_cifar(pretrained: bool = False, **kwargs: Any) -> PreResNetCifar:
    """PreResNet-101 (bottleneck blocks) for 32x32 inputs, the Early-Bird paper's PreResNet101."""
    return _create_preresnet_cifar("preresnet101_cifar", pretrained, depth=101, **kwargs)


@register_model
def preresnet164_cifar(pretrained: bool = False, **kwargs: Any) -> PreResNetCifar:
    """PreResNet-164 (bottleneck blocks) for 32x32 inputs, network slimming's deepest net."""
    return _create_preresnet_cifar("preresnet164_cifar", pretrained, depth=164, **kwargs)

"""Tiny slimmed models with their spec and ticket, for the export and bench tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ebcompress.channels.graph import draw_ticket
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.deploy.bundle import ModelSpec

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class SlimCase:
    spec: ModelSpec
    dense: nn.Module
    slim: nn.Module
    ticket: Ticket


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Spread BN scales and statistics so tickets are not index tie-breaks and outputs vary."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.2)
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def slim_case(
    arch: str = "timm:test_resnet",
    build_kwargs: dict | None = None,
    *,
    ratio: float = 0.3,
    image_size: int = 32,
    num_classes: int = 10,
) -> SlimCase:
    """A dense model with random BN, a ticket drawn at ``ratio`` and the slimmed copy."""
    spec = ModelSpec(
        arch=arch,
        build_kwargs=dict(build_kwargs or {}),
        num_classes=num_classes,
        in_chans=3,
        input_size=(3, image_size, image_size),
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    dense = randomize_batchnorm(spec.build_dense())
    example = spec.example_inputs(2)
    ticket = draw_ticket(dense, ratio, example_inputs=example)
    return SlimCase(spec, dense, slim(dense, ticket, example).eval(), ticket)

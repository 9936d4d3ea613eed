"""Resetting zero-initialised BatchNorm scales equals building with zero-init off."""

from __future__ import annotations

import timm
import torch
import torchvision

from ebcompress.zero_init import reset_zero_init_bn


def test_a_timm_resnet_reset_is_bit_identical_to_zero_init_last_false() -> None:
    torch.manual_seed(0)
    reset = timm.create_model("resnet10t", num_classes=10)
    names = reset_zero_init_bn(reset)
    torch.manual_seed(0)
    built = timm.create_model("resnet10t", num_classes=10, zero_init_last=False)
    assert names == ("layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2", "layer4.0.bn2")
    for (key, a), b in zip(reset.state_dict().items(), built.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_torchvision_zero_init_residual_and_a_plain_model() -> None:
    model = torchvision.models.resnet18(num_classes=3, zero_init_residual=True)
    names = reset_zero_init_bn(model)
    assert len(names) == 8 and all(n.endswith(".bn2") for n in names)
    assert reset_zero_init_bn(torchvision.models.resnet18(num_classes=3)) == ()


def test_only_the_given_batchnorms_and_only_all_zero_scales() -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    torch.nn.init.zeros_(model[0].weight)
    torch.nn.init.zeros_(model[1].weight)
    assert reset_zero_init_bn(model, [model[1]]) == ("1",)
    assert not model[0].weight.any() and torch.equal(model[1].weight, torch.ones(4))
    with torch.no_grad():
        model[0].weight[0] = 0.5  # partly zero: a trained state, not an initialisation
    assert reset_zero_init_bn(model) == ()

"""build_model by name (timm, torchvision, the CIFAR zoo) and the zoo's timm registration."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from ebcompress.errors import UserError
from ebcompress.models import build_model, list_cifar_models

CIFAR_MODELS = [
    "preresnet20_cifar", "preresnet56_cifar", "preresnet101_cifar", "preresnet164_cifar",
    "preresnet_cifar", "resnet20_cifar", "resnet32_cifar", "resnet56_cifar", "resnet110_cifar",
    "vgg11_cifar", "vgg13_cifar", "vgg16_cifar", "vgg19_cifar",
]  # fmt: skip


def test_list_cifar_models_names_every_registered_model() -> None:
    assert list_cifar_models() == CIFAR_MODELS


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_timm_creates_every_cifar_model_with_the_timm_api(name: str) -> None:
    model = timm.create_model(
        name, num_classes=7, in_chans=1, width_mult=0.25, pretrained_cfg_overlay={"crop_pct": 0.9}
    )
    features = model.forward_features(torch.randn(2, 1, 32, 32))
    assert model.forward_head(features).shape == (2, 7)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model.num_classes == 7
    assert model.get_classifier() is model.fc
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["num_classes"] == 7 and cfg["input_size"] == (1, 32, 32)
    assert len(cfg["mean"]) == len(cfg["std"]) == 1
    assert cfg["classifier"] == "fc" and cfg["crop_pct"] == 0.9
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)


@pytest.mark.parametrize("name", ["vgg11_cifar", "timm:vgg11_cifar"])
def test_bare_and_timm_prefixed_cifar_names(name: str) -> None:
    model = build_model(name, num_classes=5, in_chans=2, width_mult=0.25)
    assert model(torch.randn(2, 2, 32, 32)).shape == (2, 5)
    assert model.pretrained_cfg["architecture"] == "vgg11_cifar"


def test_timm_model_by_name() -> None:
    model = build_model("timm:resnet18", num_classes=10, in_chans=1)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("in_chans", [3, 1])
def test_torchvision_model_by_name(in_chans: int) -> None:
    model = build_model("tv:resnet18", num_classes=10, in_chans=in_chans)
    assert model.conv1.in_channels == in_chans
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == (
        (7, 7),
        (2, 2),
        (3, 3),
    )
    assert model(torch.randn(2, in_chans, 32, 32)).shape == (2, 10)


def test_torchvision_first_conv_inside_a_sequential_is_replaced() -> None:
    model = build_model("tv:mobilenet_v3_small", num_classes=3, in_chans=1)
    first = model.features[0][0]
    assert (first.in_channels, first.out_channels, first.stride) == (1, 16, (2, 2))
    # Drawn at the scale of torchvision's fan-out init, not nn.Conv2d's default (std ~0.19).
    assert first.weight.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.25)
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not_a_model", r"unknown timm model 'not_a_model'.*timm\.list_models"),
        ("timm:resnet18x", r"unknown timm model 'resnet18x'.*timm\.list_models"),
        ("tv:resnet18x", r"unknown torchvision model 'resnet18x'.*list_models\(\)"),
        ("hf-hub:timm/resnet18", r"unknown source 'hf-hub'.*'tv:NAME'"),
    ],
)
def test_unknown_names_say_how_to_list_models(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_model(name, num_classes=10)


def test_weights_and_unknown_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="'pretrained' is not accepted"):
        build_model("vgg11_cifar", num_classes=10, pretrained=True)
    with pytest.raises(UserError, match="'weights' is not accepted"):
        build_model("tv:resnet18", num_classes=10, weights="DEFAULT")
    with pytest.raises(UserError, match="'vgg11_cifar' rejected its arguments.*no_such_arg"):
        build_model("vgg11_cifar", num_classes=10, no_such_arg=1)

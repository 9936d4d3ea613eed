"""CIFAR ResNet: depths, option-B shortcuts, invalid depths, shapes, slimming."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from ebcompress.errors import UserError
from ebcompress.models.resnet_cifar import ResNetCifar


@pytest.mark.parametrize(
    ("name", "per_stage"),
    [("resnet20_cifar", 3), ("resnet32_cifar", 5), ("resnet56_cifar", 9), ("resnet110_cifar", 18)],
)
def test_blocks_per_stage_follow_the_name(name: str, per_stage: int) -> None:
    model = timm.create_model(name, width_mult=0.25)
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [per_stage] * 3


def test_projection_shortcuts_exactly_where_the_shape_changes() -> None:
    model = timm.create_model("resnet20_cifar", width_mult=0.5)
    projections = [
        name
        for name, block in model.named_modules()
        if name.count(".") == 1 and not isinstance(block.downsample, nn.Identity)
    ]
    assert projections == ["layer2.0", "layer3.0"]
    conv, norm = model.layer3[0].downsample
    assert (conv.in_channels, conv.out_channels, conv.stride) == (16, 32, (2, 2))
    assert isinstance(norm, nn.BatchNorm2d)
    assert model.num_features == 32


@pytest.mark.parametrize("depth", [21, 2, 0, 57, 20.0])
def test_invalid_depth_is_a_user_error(depth: object) -> None:
    with pytest.raises(UserError, match=rf"depth={depth!r} is not valid.*6n\+2"):
        ResNetCifar(depth=depth, width_mult=0.25)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("in_chans", "size", "num_classes"), [(3, 32, 10), (1, 28, 100), (4, 16, 2)]
)
def test_forward_shapes(in_chans: int, size: int, num_classes: int) -> None:
    model = timm.create_model(
        "resnet20_cifar", num_classes=num_classes, in_chans=in_chans, width_mult=0.25
    )
    assert model(torch.randn(2, in_chans, size, size)).shape == (2, num_classes)
    assert model.conv1.in_channels == in_chans


def test_batchnorm_weights_start_at_one_unless_asked() -> None:
    default = timm.create_model("resnet20_cifar", width_mult=0.25)
    slimming = timm.create_model("resnet20_cifar", width_mult=0.25, bn_gamma=0.5)
    assert torch.all(default.layer1[0].bn2.weight == 1.0)
    assert torch.all(slimming.layer1[0].bn2.weight == 0.5)


def test_slimming_the_last_stage_shrinks_num_features() -> None:
    model = timm.create_model("resnet20_cifar", width_mult=0.25)
    example = torch.randn(1, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    conv = model.layer3[0].downsample[0]
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 3, 4]).prune()
    assert model.num_features == model.fc.in_features == 13
    assert all(block.bn2.num_features == 13 for block in model.layer3)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0]).prune()
    assert model.layer1[2].conv2.out_channels == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)

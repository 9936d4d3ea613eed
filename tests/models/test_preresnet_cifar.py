"""Pre-activation ResNet: depths and block types, invalid depths, shapes, slimming."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from ebcompress.errors import UserError
from ebcompress.models.preresnet_cifar import (
    PreActBasicBlock,
    PreActBottleneck,
    PreResNetCifar,
    block_layout,
)


@pytest.mark.parametrize(
    ("depth", "block", "per_stage"),
    [(8, PreActBasicBlock, 1), (20, PreActBasicBlock, 3), (56, PreActBasicBlock, 9),
     (98, PreActBasicBlock, 16), (101, PreActBottleneck, 11), (110, PreActBottleneck, 12),
     (164, PreActBottleneck, 18)],
)  # fmt: skip
def test_block_layout_follows_depth(depth: int, block: type, per_stage: int) -> None:
    assert block_layout(depth) == (block, per_stage)


@pytest.mark.parametrize("depth", [21, 29, 100, 104, 2, 0, -4, 56.0, True, "56"])
def test_invalid_depth_names_it_and_the_valid_forms(depth: object) -> None:
    with pytest.raises(UserError, match=rf"depth={depth!r} is not valid.*6n\+2.*9n\+2"):
        PreResNetCifar(depth=depth, width_mult=0.25)  # type: ignore[arg-type]


def test_invalid_depth_through_timm_is_a_user_error() -> None:
    with pytest.raises(UserError, match="depth=57"):
        timm.create_model("preresnet_cifar", depth=57)


@pytest.mark.parametrize(
    ("name", "kwargs", "layers", "features"),
    [("preresnet20_cifar", {}, 20, 16), ("preresnet_cifar", {"depth": 14}, 14, 16),
     ("preresnet101_cifar", {}, 101, 64)],
)  # fmt: skip
def test_depth_counts_weighted_layers(name: str, kwargs: dict, layers: int, features: int) -> None:
    model = timm.create_model(name, width_mult=0.25, **kwargs)
    shortcuts = {id(block.downsample) for stage in (model.layer1, model.layer2, model.layer3)
                 for block in stage}  # fmt: skip
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in shortcuts]
    assert len(convs) + 1 == layers  # the classifier is the last weighted layer
    assert model.num_features == features
    assert isinstance(model.layer1[0].downsample, nn.Conv2d) == (features == 64)
    assert isinstance(model.layer2[0].downsample, nn.Conv2d)
    assert isinstance(model.layer2[1].downsample, nn.Identity)


@pytest.mark.parametrize(
    ("name", "in_chans", "size", "num_classes"),
    [("preresnet20_cifar", 1, 28, 10), ("preresnet56_cifar", 3, 16, 100),
     ("preresnet164_cifar", 3, 32, 5)],
)  # fmt: skip
def test_forward_shapes(name: str, in_chans: int, size: int, num_classes: int) -> None:
    model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, width_mult=0.25)
    assert model(torch.randn(2, in_chans, size, size)).shape == (2, num_classes)


def test_batchnorm_weights_start_at_one_half() -> None:
    model = timm.create_model("preresnet20_cifar", width_mult=0.25)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 19  # two per block plus the final norm
    assert all(torch.all(bn.weight == 0.5) for bn in norms)


@pytest.mark.parametrize("name", ["preresnet20_cifar", "preresnet101_cifar"])
def test_slimming_residual_and_inner_groups(name: str) -> None:
    model = timm.create_model(name, width_mult=0.25)
    dense_width = model.num_features
    example = torch.randn(1, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    residual = graph.get_pruning_group(
        model.layer3[0].downsample, tp.prune_conv_out_channels, idxs=[1, 2]
    )
    residual.prune()
    assert model.num_features == model.fc.in_features == model.norm.num_features == dense_width - 2
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    graph.get_pruning_group(model.layer2[1].conv1, tp.prune_conv_out_channels, idxs=[0]).prune()
    assert model.layer2[1].bn2.num_features == model.layer2[1].conv1.out_channels
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)

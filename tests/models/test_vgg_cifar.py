"""The network-slimming VGG: MAC count, shapes at several input sizes, init, slimming."""

from __future__ import annotations

import pytest
import timm
import torch
import torch_pruning as tp
from fvcore.nn import FlopCountAnalysis
from torch import nn

from ebcompress.errors import UserError
from ebcompress.models.vgg_cifar import VGGCifar, cfgs


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_vgg16_cifar_has_the_reference_314_6_million_macs_at_32x32() -> None:
    model = timm.create_model("vgg16_cifar", num_classes=10)
    # A freshly built model is in training mode, where fvcore counts 5 ops per BN element;
    # that is the convention behind the reference 314.6 M (eval mode gives 313.8 M).
    assert model.training
    counter = FlopCountAnalysis(model, torch.randn(1, 3, 32, 32))
    counter.unsupported_ops_warnings(False)
    assert round(counter.total() / 1e6, 1) == 314.6


@pytest.mark.parametrize(
    ("name", "conv_count"),
    [("vgg11_cifar", 8), ("vgg13_cifar", 10), ("vgg16_cifar", 13), ("vgg19_cifar", 16)],
)
def test_depths_match_their_names(name: str, conv_count: int) -> None:
    model = timm.create_model(name, width_mult=0.25)
    assert isinstance(model, VGGCifar)
    assert len(_convs(model)) == conv_count
    assert all(conv.bias is None and conv.kernel_size == (3, 3) for conv in _convs(model))


@pytest.mark.parametrize(
    ("in_chans", "size", "num_classes"), [(3, 32, 10), (1, 28, 7), (3, 16, 100), (2, 40, 3)]
)
def test_forward_shapes_at_other_input_sizes(in_chans: int, size: int, num_classes: int) -> None:
    model = timm.create_model(
        "vgg16_cifar", num_classes=num_classes, in_chans=in_chans, width_mult=0.25
    )
    x = torch.randn(2, in_chans, size, size)
    assert model(x).shape == (2, num_classes)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, 128)
    assert model.forward_head(features, pre_logits=True).shape == (2, 128)


def test_width_mult_scales_every_conv() -> None:
    model = VGGCifar(cfgs["vgg16_cifar"], width_mult=0.25)
    widths = [conv.out_channels for conv in _convs(model)]
    full = [item for item in cfgs["vgg16_cifar"] if item != "M"]
    assert widths == [width // 4 for width in full]
    assert model.num_features == 128


def test_weights_start_as_in_network_slimming() -> None:
    model = timm.create_model("vgg11_cifar", width_mult=0.25)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0) for bn in norms)
    assert torch.all(model.fc.bias == 0)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.3)


def test_pretrained_weights_are_refused() -> None:
    with pytest.raises(UserError, match="vgg16_cifar has no pretrained weights"):
        timm.create_model("vgg16_cifar", pretrained=True)


def test_slimming_the_last_conv_group_shrinks_num_features_and_the_head() -> None:
    model = timm.create_model("vgg16_cifar", width_mult=0.25, drop_rate=0.1)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    group = graph.get_pruning_group(_convs(model)[-1], tp.prune_conv_out_channels, idxs=[0, 5, 7])
    group.prune()
    assert model.num_features == model.fc.in_features == 125
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model.reset_classifier(4)
    assert (model.fc.in_features, model.fc.out_features, model.num_classes) == (125, 4, 4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    model.reset_classifier(0)
    assert model.num_features == 125
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 125)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"width_mult": 0.0}, "width_mult=0.0 must be positive"),
     ({"num_classes": -1}, "num_classes=-1 must be >= 0"),
     ({"in_chans": 0}, "in_chans=0 must be >= 1")],
)  # fmt: skip
def test_bad_sizes_are_user_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        timm.create_model("vgg11_cifar", **kwargs)

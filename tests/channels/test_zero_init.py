"""Zero-initialised BatchNorms are found, and left out of their group's importance."""

from __future__ import annotations

import timm
import torch
import torchvision

from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.zero_init import find_zero_init_bn


def test_timm_and_torchvision_zero_init_batchnorms_are_found() -> None:
    model = timm.create_model("resnet10t", num_classes=10)
    assert find_zero_init_bn(model) == (
        "layer1.0.bn2",
        "layer2.0.bn2",
        "layer3.0.bn2",
        "layer4.0.bn2",
    )
    assert find_zero_init_bn(timm.create_model("resnet10t", zero_init_last=False)) == ()
    names = find_zero_init_bn(torchvision.models.resnet18(num_classes=3, zero_init_residual=True))
    assert len(names) == 8 and all(n.endswith(".bn2") for n in names)


def test_only_all_zero_scales_count_and_only_among_the_given_batchnorms() -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    torch.nn.init.zeros_(model[0].weight)
    torch.nn.init.zeros_(model[1].weight)
    assert find_zero_init_bn(model, [model[1]]) == ("1",)
    with torch.no_grad():
        model[0].weight[0] = 0.5  # partly zero: a trained state, not an initialisation
    assert find_zero_init_bn(model) == ("1",)


def test_the_residual_stream_is_ranked_by_its_other_batchnorms_and_the_model_is_untouched():
    model = timm.create_model("resnet10t", num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():  # distinct scales, as after some training; the zero-init ones stay 0
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.weight.any():
                module.weight.uniform_(0.5, 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = ChannelGraph(model, torch.randn(1, 3, 32, 32))
    assert graph.zero_init_bns == find_zero_init_bn(model)
    stream = next(g for g in graph.groups if "layer1.0.bn2" in g.bn_names)
    counted = [n for n in stream.bn_names if n not in graph.zero_init_bns]
    assert counted  # the stem's / downsample's BNs
    expected = torch.stack([model.get_submodule(n).weight.abs() for n in counted]).mean(0)
    torch.testing.assert_close(graph.importance()[stream.name], expected.float())
    ticket = graph.draw(0.5, max_group_ratio=1.0, warn=False)  # the paper's uncapped rule
    assert ticket.zero_init_bns == graph.zero_init_bns
    # not sunk by the zeros: it loses about the global share, not all but one channel
    assert len(ticket.kept[stream.name]) > 0.25 * stream.width
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_importance_override_does_not_claim_the_batchnorms_were_left_out() -> None:
    model = timm.create_model("resnet10t", num_classes=10)
    graph = ChannelGraph(model, torch.randn(1, 3, 32, 32))
    scores = {name: torch.rand(width) for name, width in graph.widths.items()}
    assert graph.draw(0.3, importance=scores, warn=False).zero_init_bns == ()
    assert graph.draw(0.3, warn=False).zero_init_bns == graph.zero_init_bns != ()

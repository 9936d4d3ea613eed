import dataclasses
import json

import pytest
import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.channels.graph import ChannelGraph, draw_ticket
from ebcompress.channels.groups import out_width
from ebcompress.channels.slim import group_widths, masked_equivalent, slim
from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import count_flops
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.errors import UserError
from ebcompress.models import build_model

SLOW = pytest.mark.slow
TOLERANCE = 1e-5

# (model name, constructor kwargs, input side, ratios); randomly initialised, nothing downloads
ARCHITECTURES = [
    pytest.param("vgg16_cifar", {"width_mult": 0.25}, 32, (0.3, 0.5), id="vgg16_cifar"),
    pytest.param(
        "preresnet_cifar", {"depth": 20, "width_mult": 0.5}, 32, (0.3, 0.5), id="preresnet20"
    ),
    pytest.param(
        "preresnet_cifar",
        {"depth": 101, "width_mult": 0.25},
        32,
        (0.3,),
        id="preresnet101-bottleneck",
    ),
    pytest.param("resnet20_cifar", {"width_mult": 0.5}, 32, (0.3,), id="resnet20_cifar"),
    pytest.param("timm:resnet18", {}, 32, (0.3,), id="timm-resnet18"),
    pytest.param("timm:resnet50", {}, 32, (0.3,), id="timm-resnet50", marks=SLOW),
    pytest.param("timm:mobilenetv2_100", {}, 32, (0.3,), id="timm-mobilenetv2_100", marks=SLOW),
    pytest.param("timm:efficientnet_b0", {}, 32, (0.3,), id="timm-efficientnet_b0", marks=SLOW),
    pytest.param("timm:regnetx_002", {}, 64, (0.3, 0.5), id="timm-regnetx_002", marks=SLOW),
    pytest.param("timm:densenet121", {}, 32, (0.3,), id="timm-densenet121", marks=SLOW),
    pytest.param("tv:resnet18", {}, 32, (0.3,), id="tv-resnet18"),
    pytest.param("tv:mobilenet_v3_small", {}, 32, (0.3,), id="tv-mobilenet_v3_small"),
]


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> None:
    """Random gamma (both signs), beta and running statistics: a non-trivial ranking."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                n = module.num_features
                sign = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
                module.weight.copy_(sign * (torch.rand(n, generator=generator) * 1.5 + 0.05))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def _model(name: str, side: int = 32, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **kwargs)
    randomize_batchnorms(model)
    return model.eval(), torch.randn(2, 3, side, side)


def _assert_exact(model: nn.Module, ticket, x: torch.Tensor) -> nn.Module:
    slimmed = slim(model, ticket, x)
    masked = masked_equivalent(model, ticket, x)
    with torch.no_grad():
        out, reference, dense = slimmed(x), masked(x), model(x)
    assert out.shape == dense.shape
    assert (out - reference).abs().max().item() < TOLERANCE
    assert (dense - reference).abs().max().item() > 100 * TOLERANCE  # the masking did something
    modules = dict(slimmed.named_modules())
    assert {name: out_width(modules[name]) for name in ticket.widths} == ticket.kept_counts()
    return slimmed


@pytest.mark.parametrize(("name", "kwargs", "side", "ratios"), ARCHITECTURES)
def test_slim_equals_masked_equivalent(name, kwargs, side, ratios):
    model, x = _model(name, side, **kwargs)
    graph = ChannelGraph(model, x)
    for ratio in ratios:
        ticket = graph.draw(ratio)
        assert abs(ticket.pruned_fraction - ratio) < 0.02
        _assert_exact(model, ticket, x)


@pytest.mark.parametrize("name", ["preresnet_cifar", "timm:regnetx_002", "tv:mobilenet_v3_small"])
def test_slim_model_traces_to_the_tickets_widths(name):
    model, x = _model(name)
    ticket = ChannelGraph(model, x).draw(0.4)
    assert group_widths(slim(model, ticket, x), x) == ticket.kept_counts()


def test_slim_leaves_the_original_untouched():
    model, x = _model("resnet20_cifar", width_mult=0.5)
    model.train()
    params = dict(model.named_parameters())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    slimmed = slim(model, ChannelGraph(model, x).draw(0.5), x)
    assert model.training and all(module.training for module in model.modules())
    assert dict(model.named_parameters()) == params
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in params.values())


def test_concurrent_slims_of_one_model_agree_and_leave_it_untouched():
    """slim checks its inputs on its own copy, so threads slimming one model never see each
    other's eval/train toggling (a training-mode BatchNorm on a batch of one would refuse)."""
    from concurrent.futures import ThreadPoolExecutor

    model, x = _model("resnet20_cifar", width_mult=0.5)
    model.train()
    ticket = ChannelGraph(model, x).draw(0.5)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    expected = slim(model, ticket, x[:1]).state_dict()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: slim(model, ticket, x[:1]).state_dict(), range(6)))
    for result in results:
        assert all(torch.equal(result[k], expected[k]) for k in expected)
    assert all(module.training for module in model.modules())
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("training", [True, False])
def test_slim_preserves_modes_and_requires_grad(training):
    model, x = _model("resnet20_cifar", width_mult=0.5)
    model.train(training)
    model.conv1.weight.requires_grad_(False)
    slimmed = slim(model, ChannelGraph(model, x).draw(0.3), x)
    assert all(module.training == training for module in slimmed.modules())
    assert not slimmed.conv1.weight.requires_grad
    assert slimmed.layer1[0].conv1.weight.requires_grad


def test_slim_keeps_mixed_modes_of_a_timm_style_model():
    model, x = _model("resnet20_cifar", width_mult=0.5)
    model.train()
    model.fc.eval()  # e.g. a frozen head; sync_timm_attributes used to reset it to training
    slimmed = slim(model, ChannelGraph(model, x).draw(0.3), x)
    assert {n: m.training for n, m in slimmed.named_modules()} == {
        n: m.training for n, m in model.named_modules()
    }
    assert not slimmed.fc.training and slimmed.layer1.training


def test_fingerprint_mismatch_is_a_user_error_naming_the_group():
    wide, x = _model("resnet20_cifar", width_mult=0.5)
    narrow, _ = _model("resnet20_cifar", width_mult=0.25)
    ticket = ChannelGraph(wide, x).draw(0.3)
    with pytest.raises(UserError, match="'conv1' is 8 wide in the ticket, 4 in the model"):
        slim(narrow, ticket, x)
    with pytest.raises(UserError, match="ticket does not fit"):
        masked_equivalent(narrow, ticket, x)
    tampered = dataclasses.replace(ticket, fingerprint="0" * 16)
    with pytest.raises(UserError, match="fingerprint"):
        slim(wide, tampered, x)


def test_head_is_never_pruned_and_no_group_is_emptied():
    model, x = _model("tv:mobilenet_v3_small")  # depthwise groups go down to one channel
    ticket = ChannelGraph(model, x).draw(0.99)
    assert min(ticket.kept_counts().values()) == 1
    slimmed = _assert_exact(model, ticket, x)
    assert slimmed.classifier[-1].out_features == 10
    assert all(out_width(m) > 0 for m in slimmed.modules() if out_width(m) is not None)


def test_round_to_and_uniform_tickets_slim_exactly():
    model, x = _model("resnet20_cifar", width_mult=0.5)
    graph = ChannelGraph(model, x)
    rounded = graph.draw(0.5, round_to=4)
    assert all(count % 4 == 0 for count in rounded.kept_counts().values())
    _assert_exact(model, rounded, x)
    _assert_exact(model, graph.draw(0.5, scope="uniform"), x)


def test_grouped_convolution_slims_exactly():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, groups=4),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 3),
    )
    randomize_batchnorms(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    ticket = ChannelGraph(model, x).draw(0.5)
    slimmed = _assert_exact(model, ticket, x)
    assert slimmed[3].groups == 4 and slimmed[3].in_channels == 4


def test_ignored_layers_stay_dense_and_the_ticket_replays_them():
    model, x = _model("resnet20_cifar", width_mult=0.5)
    ignored = [model.layer1[0].conv1]
    ticket = ChannelGraph(model, x, ignored_layers=ignored).draw(0.5)
    assert "layer1.0.conv1" not in ticket.widths
    assert ticket.ignored_layers == ("layer1.0.conv1",)
    assert Ticket.from_dict(json.loads(json.dumps(ticket.to_dict()))) == ticket
    dense_width = model.layer1[0].conv1.out_channels
    for given in (ignored, ["layer1.0.conv1"], ()):  # modules, names, or the ticket's record
        slimmed = slim(model, ticket, x, graph_ignored_layers=given)
        assert slimmed.layer1[0].conv1.out_channels == dense_width
    masked = masked_equivalent(model, ticket, x)
    with torch.no_grad():
        assert (masked(x) - slimmed(x)).abs().max().item() < TOLERANCE
    unrecorded = dataclasses.replace(ticket, ignored_layers=())
    with pytest.raises(UserError, match="'layer1.0.conv1' is missing from the ticket"):
        slim(model, unrecorded, x)
    foreign = dataclasses.replace(ticket, ignored_layers=("blocks.0.conv",))
    with pytest.raises(UserError, match="the ticket's ignored layer 'blocks.0.conv' is not in"):
        slim(model, foreign, x)
    with pytest.raises(UserError, match="the ticket's ignored layer 'blocks.0.conv' is not in"):
        masked_equivalent(model, foreign, x)


def test_an_ignored_container_keeps_all_its_layers_dense():
    model = timm.create_model("test_resnet", num_classes=10).eval()
    randomize_batchnorms(model)
    x = torch.randn(1, 3, 32, 32)
    free = ChannelGraph(model, x).draw(0.5)
    assert any(name.startswith("layer1.") for name in free.widths)  # layer1 is prunable
    ticket = ChannelGraph(model, x, ignored_layers=[model.layer1]).draw(0.5)
    assert ticket.ignored_layers == ("layer1",)
    assert not any(name.startswith("layer1.") for name in ticket.widths)
    # the stem's last conv feeds layer1's residual additions: that group goes too
    assert "conv1.6" in free.widths and "conv1.6" not in ticket.widths
    assert ChannelGraph(model, x, ignored_layers=["layer1"]).widths == ticket.widths
    slimmed = _assert_exact(model, ticket, x)
    dense_shapes = {k: v.shape for k, v in model.layer1.state_dict().items()}
    assert {k: v.shape for k, v in slimmed.layer1.state_dict().items()} == dense_shapes
    assert slimmed.layer2[0].conv1.out_channels < model.layer2[0].conv1.out_channels


def test_an_ignored_layer_outside_the_model_is_a_one_line_user_error():
    model, x = _model("resnet20_cifar", width_mult=0.5)
    with pytest.raises(UserError, match=r"^ignored layer Conv2d is not a submodule") as info:
        ChannelGraph(model, x, ignored_layers=[nn.Conv2d(3, 3, 1)])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="ignored layer 'layer9' is not in the model"):
        ChannelGraph(model, x, ignored_layers=["layer9"])


class OneByOneBN(nn.Module):
    """Its last feature map is 1x1 with BatchNorm: BN in training mode cannot take a batch
    of one there (one value per channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 4, stride=4, bias=False)  # 4x4 -> 1x1
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).flatten(1))


def _check_batch_of_one(model: nn.Module, x: torch.Tensor, training: bool) -> None:
    """The whole API on one sample: graph, EarlyBird, slim (with and without the input),
    masked_equivalent and count_flops; the model's modes and BN statistics untouched."""
    model.train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = ChannelGraph(model, x).draw(0.5)
    bird = EarlyBird(model, example_inputs=x, ratio=0.5)
    assert not bird.step() and bird.graph.widths == ticket.widths
    slimmed = slim(model, ticket, x)
    assert group_widths(slim(model, ticket), x) == ticket.kept_counts()
    masked = masked_equivalent(model, ticket, x)
    dense_cost, slim_cost = count_flops(model, x), count_flops(slimmed, x)
    assert 0 < slim_cost.macs < dense_cost.macs
    assert dense_cost == count_flops(model, tuple(x.shape[1:]))
    assert count_flops(masked, x) == dense_cost
    assert all(m.training == training for m in (*model.modules(), *slimmed.modules()))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("training", [True, False])
def test_a_batch_of_one_on_a_1x1_batchnorm_map(training):
    model = OneByOneBN()
    randomize_batchnorms(model)
    _check_batch_of_one(model, torch.randn(1, 3, 4, 4), training)


@SLOW
@pytest.mark.parametrize("training", [True, False])
def test_a_batch_of_one_on_hardcorenas_at_32_px(training):
    torch.manual_seed(0)
    model = timm.create_model("hardcorenas_a", num_classes=10)  # stride 32: its last map is 1x1
    randomize_batchnorms(model)
    _check_batch_of_one(model, torch.randn(1, 3, 32, 32), training)


def test_masked_equivalent_keeps_shapes_and_zeroes_pruned_slices():
    model, x = _model("resnet20_cifar", width_mult=0.5)
    ticket = ChannelGraph(model, x).draw(0.5)
    masked = masked_equivalent(model, ticket, x)
    pruned = ticket.pruned("layer1.0.conv1")
    assert masked.layer1[0].conv1.weight.shape == model.layer1[0].conv1.weight.shape
    assert masked.layer1[0].bn1.weight[pruned].abs().sum() == 0
    assert masked.layer1[0].bn1.bias[pruned].abs().sum() == 0
    assert masked.layer1[0].conv1.weight[pruned].abs().sum() == 0
    assert masked.layer1[0].conv2.weight[:, pruned].abs().sum() == 0
    assert model.layer1[0].bn1.weight[pruned].abs().sum() > 0  # the original keeps them


class HiddenChannels(nn.Module):
    """Adds a buffer of fixed width that torch-pruning cannot see: slimming must fail loudly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("offset", torch.ones(1, 8, 1, 1))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.bn(self.conv(x)) + self.offset).mean(dim=(2, 3)))


def test_architecture_that_cannot_be_slimmed_names_the_layer():
    model = HiddenChannels().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match="fails at layer 'bn'"):
        slim(model, ChannelGraph(model, x, probe=False).draw(0.5), x)


def test_the_probe_keeps_a_group_dense_that_slimming_would_break():
    model = HiddenChannels().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match="kept dense: conv: slimming it breaks layer 'bn'"):
        ChannelGraph(model, x)


def test_slim_without_example_inputs_uses_the_shape_the_ticket_records() -> None:
    model = build_model("vgg11_cifar", num_classes=10, width_mult=0.25)
    x = torch.randn(2, 3, 32, 32)
    ticket = draw_ticket(model, 0.3, example_inputs=x[:1])
    assert ticket.input_shape == (3, 32, 32)
    with torch.no_grad():
        a = slim(model, ticket).eval()(x)
        b = slim(model, ticket, x[:1]).eval()(x)
    assert torch.equal(a, b)
    bare = type(ticket)(kept=ticket.kept, widths=ticket.widths, ratio=ticket.ratio)
    with pytest.raises(UserError, match="records no input shape; pass example_inputs"):
        slim(model, bare)


def test_a_slim_timm_model_reports_its_new_width_and_resets_its_head() -> None:
    model = build_model("timm:resnet18", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    slimmed = slim(model, draw_ticket(model, 0.5, example_inputs=x, scope="uniform"), x)
    width = slimmed.get_classifier().in_features
    assert width < 512 and slimmed.num_features == width
    slimmed.reset_classifier(4)
    assert slimmed.get_classifier().in_features == width
    assert slimmed.eval()(x).shape == (1, 4)

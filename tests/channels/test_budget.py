"""Tickets drawn to a MACs or parameter budget, and the cost model that counts them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.channels.budget import RESOLUTION
from ebcompress.channels.draw_options import Budget, DrawOptions
from ebcompress.channels.graph import ChannelGraph, draw_ticket
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import count_flops
from ebcompress.errors import UserError
from ebcompress.models import build_model

SLOW = pytest.mark.slow
TOLERANCE = 0.02  # the target: at most 2 % (of the budget) below it


def _timm(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=10)


def _same_padding_net() -> nn.Module:
    """A depthwise convolution with ``padding="same"``, which fvcore does not count."""
    return nn.Sequential(
        *(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        *(nn.Conv2d(16, 16, 3, padding="same", groups=16), nn.BatchNorm2d(16), nn.ReLU()),
        *(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU()),
        *(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)),
    )


# (builder, input side); randomly initialised, nothing downloads
ARCHITECTURES = [
    pytest.param(lambda: build_model("vgg11_cifar", 10, 3, width_mult=0.25), 32, id="vgg11"),
    # full width: at width 0.5 one channel of an 8-wide residual stream moves the MACs by
    # about 4 %, more than the 2 % the search can then get within
    pytest.param(lambda: build_model("resnet20_cifar", 10, 3), 32, id="resnet20"),
    pytest.param(lambda: _timm("test_resnet"), 64, id="timm-test_resnet"),
    pytest.param(lambda: _timm("resnet10t"), 64, id="timm-resnet10t"),
    pytest.param(_same_padding_net, 16, id="same-padding"),
    pytest.param(lambda: _timm("mobilenetv3_small_050"), 64, id="timm-mobilenetv3", marks=SLOW),
    pytest.param(lambda: _timm("regnetx_002"), 64, id="timm-regnetx_002-grouped", marks=SLOW),
]


def _spread_scales(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct BN scales (timm zero-inits some): a ranking with something to rank."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.05)
    return model.eval()


def _setup(build, side: int) -> tuple[nn.Module, torch.Tensor, ChannelGraph]:
    model = _spread_scales(build())
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    return model, x, ChannelGraph(model, x)


def _counted(model: nn.Module, ticket: Ticket, x: torch.Tensor):
    return count_flops(slim(model, ticket, x), tuple(x.shape[1:]))


@pytest.mark.parametrize(("build", "side"), ARCHITECTURES)
def test_the_cost_model_counts_what_count_flops_counts_on_the_slim_network(build, side) -> None:
    model, x, graph = _setup(build, side)
    dense = count_flops(model, (3, side, side))
    assert graph.cost() == graph.cost_model.dense
    assert (graph.cost().macs, graph.cost().params) == (dense.macs, dense.params)
    for ratio, options in ((0.3, DrawOptions()), (0.6, DrawOptions(round_to=8))):
        ticket = graph.draw(ratio, options, warn=False)
        counted = _counted(model, ticket, x)
        assert (graph.cost(ticket).macs, graph.cost(ticket).params) == (
            counted.macs,
            counted.params,
        ), ratio


@pytest.mark.parametrize(("build", "side"), ARCHITECTURES[:4])
@pytest.mark.parametrize("measure", ["macs", "params"])
def test_a_budget_ticket_lies_within_2_percent_below_its_budget(build, side, measure) -> None:
    model, x, graph = _setup(build, side)
    dense = count_flops(model, (3, side, side))
    for fraction in (0.3, 0.5, 0.7):
        ticket = graph.draw(0.3, budget=Budget(fraction, measure), warn=False)
        counted = _counted(model, ticket, x)
        achieved = getattr(counted, measure) / getattr(dense, measure)
        assert (1 - TOLERANCE) * fraction <= achieved <= fraction, (fraction, achieved)
        record = ticket.budget
        assert record is not None and record.measure == measure and record.target == fraction
        assert record.achieved == pytest.approx(achieved, abs=1e-12)
        assert record.slim == getattr(counted, measure) and record.dense == getattr(dense, measure)


def test_the_search_keeps_the_least_pruned_ticket_that_meets_the_budget() -> None:
    model, x, graph = _setup(ARCHITECTURES[2].values[0], 64)
    limit = 0.5 * graph.cost().macs
    ticket = graph.draw(0.3, budget=Budget(0.5), warn=False)
    assert graph.cost(ticket).macs <= limit
    # a hair less pruning, and the budget is missed: the cut is where the budget binds
    looser = graph.draw(ticket.ratio - 2 * RESOLUTION, warn=False)
    assert graph.cost(looser).macs > limit
    assert ticket.kept == graph.draw(ticket.ratio, warn=False).kept


def test_the_cost_falls_with_the_ratio_under_every_rule() -> None:
    model, x, graph = _setup(ARCHITECTURES[3].values[0], 64)
    for options in (DrawOptions(), DrawOptions(round_to=8), DrawOptions(scope="uniform")):
        costs = [graph.cost(graph.draw(r, options, warn=False)) for r in np.linspace(0, 0.99, 40)]
        assert all(
            a.macs >= b.macs and a.params >= b.params
            for a, b in zip(costs, costs[1:], strict=False)
        )


def test_a_budget_keeps_round_to_and_the_per_group_cap() -> None:
    model, x, graph = _setup(ARCHITECTURES[3].values[0], 64)
    ticket = graph.draw(0.3, round_to=8, max_group_ratio=0.5, budget=Budget(0.4), warn=False)
    for name, width in ticket.widths.items():
        kept = len(ticket.kept[name])
        assert kept % 8 == 0 or kept == width, name
        assert kept >= math.ceil(0.5 * width), name
    assert ticket.extra["round_to"] == 8 and ticket.extra["max_group_ratio"] == 0.5
    assert graph.cost(ticket).macs <= 0.4 * graph.cost().macs


def test_with_a_budget_the_ratio_given_is_not_used() -> None:
    model, x, graph = _setup(ARCHITECTURES[0].values[0], 32)
    low = graph.draw(0.1, budget=Budget(0.5), warn=False)
    high = graph.draw(0.9, budget=Budget(0.5), warn=False)
    assert low == high and 0 < low.ratio < 1


def test_score_ranked_draws_meet_the_budget_too() -> None:
    model, x, graph = _setup(ARCHITECTURES[0].values[0], 32)
    generator = torch.Generator().manual_seed(3)
    scores = {name: torch.rand(width, generator=generator) for name, width in graph.widths.items()}
    ticket = graph.draw(0.3, importance=scores, budget=Budget(0.5), warn=False)
    assert ticket.importance == "custom"
    achieved = _counted(model, ticket, x).macs / count_flops(model, (3, 32, 32)).macs
    assert (1 - TOLERANCE) * 0.5 <= achieved <= 0.5


def test_draw_ticket_takes_a_budget_in_its_options() -> None:
    model = _spread_scales(build_model("vgg11_cifar", 10, 3, width_mult=0.25))
    x = torch.randn(1, 3, 32, 32)
    ticket = draw_ticket(model, 0.3, DrawOptions(budget=Budget(0.6, "params")), example_inputs=x)
    assert ticket.budget is not None and ticket.budget.measure == "params"
    assert ticket.budget.achieved <= 0.6


def test_a_budget_out_of_reach_is_one_user_error_line() -> None:
    model, x, graph = _setup(ARCHITECTURES[0].values[0], 32)
    with pytest.raises(UserError, match=r"target_macs=0\.05 is out of reach.*keeps") as info:
        graph.draw(0.3, max_group_ratio=0.5, budget=Budget(0.05), warn=False)
    assert "\n" not in str(info.value)


def test_calibration_holds_the_uncounted_macs_constant() -> None:
    model, x, graph = _setup(ARCHITECTURES[0].values[0], 32)
    modelled = graph.cost()
    graph.calibrate_cost(modelled.macs + 1000)
    assert graph.cost().macs == modelled.macs + 1000
    ticket = graph.draw(0.5, warn=False)
    assert graph.cost(ticket).macs == _counted(model, ticket, x).macs + 1000
    with pytest.raises(TypeError, match="dense_macs"):
        graph.calibrate_cost(1.5)  # type: ignore[arg-type]


def test_budget_checks_are_one_line_user_errors() -> None:
    for bad in (0.0, 1.0, -0.2, float("nan")):
        with pytest.raises(UserError, match=r"target_macs=.* must be in \(0, 1\)"):
            Budget(bad)
    with pytest.raises(UserError, match="'macs' or 'params'"):
        Budget(0.5, "flops")
    with pytest.raises(UserError, match="set one of them"):
        Budget.from_targets(macs=0.5, params=0.5)
    assert Budget.from_targets() is None
    assert Budget.from_targets(params=0.4) == Budget(0.4, "params")
    with pytest.raises(TypeError, match="budget"):
        DrawOptions(budget=0.5)  # type: ignore[arg-type]


def test_the_budget_survives_ticket_json_and_older_tickets_load_without_one(tmp_path) -> None:
    model, x, graph = _setup(ARCHITECTURES[0].values[0], 32)
    ticket = graph.draw(0.3, budget=Budget(0.5), warn=False)
    assert Ticket.load(ticket.save(tmp_path / "t.json")) == ticket
    assert "budget" not in ticket.extra  # typed, not an annotation
    older = ticket.to_dict()
    del older["budget"]
    assert Ticket.from_dict(older).budget is None
    bad = {**ticket.to_dict(), "budget": {"measure": "flops", "target": 0.5}}
    with pytest.raises(UserError, match="not a valid ticket"):
        Ticket.from_dict(bad)

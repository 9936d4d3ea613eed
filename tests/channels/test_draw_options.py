"""One set of draw options: checked once on construction, taken by every way of drawing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import ebcompress as eb
from ebcompress.channels.draw_options import DrawOptions
from ebcompress.errors import UserError


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.copy_(torch.rand(bn.num_features))
    return net


X = torch.randn(1, 3, 12, 12)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"scope": "layer"}, "scope 'layer' must be 'global' or 'uniform'"),
        ({"min_keep": 0}, "min_keep=0 must be >= 1"),
        ({"max_group_ratio": 0.0}, r"max_group_ratio=0.0 must be in \(0, 1\]"),
        ({"max_group_ratio": float("nan")}, "max_group_ratio=nan"),
        ({"round_to": 0}, "round_to=0 must be >= 1 or None"),
    ],
)
def test_a_value_that_cannot_work_is_a_user_error_naming_the_argument(fields, match) -> None:
    with pytest.raises(UserError, match=match):
        DrawOptions(**fields)


def test_a_wrong_type_is_a_type_error_and_numpy_numbers_are_stored_plain() -> None:
    with pytest.raises(TypeError, match="min_keep must be an int"):
        DrawOptions(min_keep=1.5)
    options = DrawOptions(min_keep=np.int64(2), max_group_ratio=np.float32(0.5))
    assert type(options.min_keep) is int and type(options.max_group_ratio) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.min_keep = 3  # type: ignore[misc]


def test_updated_applies_and_checks_changes_and_names_the_fields_for_a_typo() -> None:
    base = DrawOptions(scope="uniform")
    assert base.updated() is base
    assert base.updated(round_to=4) == DrawOptions(scope="uniform", round_to=4)
    with pytest.raises(UserError, match="min_keep=0"):
        base.updated(min_keep=0)
    with pytest.raises(TypeError, match="'min_kept'; the draw options are scope, min_keep"):
        base.updated(min_kept=2)


def test_options_and_keywords_draw_the_same_ticket_everywhere() -> None:
    net = _net()
    options = DrawOptions(scope="uniform", min_keep=2, max_group_ratio=1.0, round_to=2)
    graph = eb.ChannelGraph(net, X)
    by_options = graph.draw(0.5, options)
    assert by_options == graph.draw(0.5, **options.to_dict())
    assert by_options == eb.draw_ticket(net, 0.5, options, example_inputs=X)
    assert by_options == eb.draw_ticket(net, 0.5, example_inputs=X, **options.to_dict())
    assert by_options.extra == options.to_dict()  # what the ticket records
    assert graph.draw(0.5, options, scope="global") == graph.draw(
        0.5, options.updated(scope="global")
    )
    assert by_options != graph.draw(0.5)  # the defaults differ, so the options were used


def test_early_bird_takes_options_or_keywords_and_checks_them_before_training() -> None:
    net = _net()
    assert eb.EarlyBird(net, X, min_keep=2).draw_options == DrawOptions(min_keep=2)
    options = DrawOptions(scope="uniform")
    bird = eb.EarlyBird(net, X, draw_options=options, round_to=4)
    assert bird.draw_options == DrawOptions(scope="uniform", round_to=4)
    bird.step()
    assert bird.latest_ticket().extra["scope"] == "uniform"
    with pytest.raises(UserError, match="max_group_ratio=2"):
        eb.EarlyBird(net, X, max_group_ratio=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'windw'"):
        eb.EarlyBird(net, X, windw=3)


def test_options_of_the_wrong_type_are_a_type_error_naming_the_argument() -> None:
    net = _net()
    with pytest.raises(TypeError, match="options must be a DrawOptions"):
        eb.draw_ticket(net, 0.5, "uniform", example_inputs=X)
    with pytest.raises(TypeError, match="options must be a DrawOptions"):
        eb.ChannelGraph(net, X).draw(0.5, {"scope": "uniform"})
    with pytest.raises(TypeError, match="draw_options must be a DrawOptions"):
        eb.EarlyBird(net, X, draw_options={"scope": "uniform"})

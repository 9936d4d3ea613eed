"""A tiny run of a baseline: narrow VGG-11 at 16x16 on the fake data set, two epochs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ebcompress.channels.slim import masked_equivalent, slim
from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import TrainingLedger, count_flops
from ebcompress.data import load_data
from ebcompress.methods.base import RunContext
from ebcompress.methods.data import data_options
from ebcompress.models import build_model
from ebcompress.recipe import Recipe, validate_recipe

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"name": "vgg11_cifar", "kwargs": {"width_mult": 0.25}},
    "data": {"name": "fake", "image_size": 16, "train_subset": 64, "test_subset": 32},
    "train": {"epochs": 2, "batch_size": 32, "milestones": [1]},
    # two epochs on 64 images barely leave chance: a low learning bar keeps the search going
    "prune": {
        "ratio": 0.5,
        "learning_margin": 0.01,
        "snip": {"batches": 2},
        "thinet": {"samples": 16},
    },
    "export": {"formats": ["bundle"]},
}


def _merged(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in delta.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both else value
    return out


def tiny_recipe(**sections: Any) -> Recipe:
    """The tiny recipe with ``sections`` merged in (nested dicts merge, values replace)."""
    return validate_recipe(_merged(TINY, sections))


def tiny_run(recipe: Recipe) -> RunContext:
    data = load_data(data_options(recipe.data), seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
    size = (data.in_chans, data.image_size, data.image_size)
    return RunContext(
        recipe=recipe,
        data=data,
        model=model,
        example_inputs=torch.randn(1, *size, generator=torch.Generator().manual_seed(0)),
        run_dir=None,
        ledger=TrainingLedger(),
        device=torch.device("cpu"),
        dense_macs=count_flops(model, size).macs,
        progress=False,
        initial_state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def assert_slim_matches_masked(model: nn.Module, ticket: Ticket, example: torch.Tensor) -> None:
    """The exactness check EB's tickets pass: slim(x) == masked_equivalent(x) in eval mode."""
    slimmed = slim(model, ticket, example).eval()
    masked = masked_equivalent(model, ticket, example).eval()
    x = torch.randn(4, *example.shape[1:], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(slimmed(x), masked(x), rtol=1e-4, atol=1e-5)

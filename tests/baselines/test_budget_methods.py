"""Every channel-pruning method draws its ticket to ``prune.target_macs`` through the draw
options, and the slim network it hands on meets the budget."""

import pytest
from tiny_runs import tiny_recipe, tiny_run

from ebcompress.channels.slim import slim
from ebcompress.cost.flops import count_flops
from ebcompress.methods.base import get_method


@pytest.mark.parametrize("method", ["eb", "ns", "lt", "snip", "thinet"])
def test_each_method_meets_a_macs_budget(method: str) -> None:
    run = tiny_run(tiny_recipe(prune={"method": method, "target_macs": 0.5}))
    ticket = get_method(method).search(run).ticket
    assert ticket.budget is not None and ticket.budget.target == 0.5
    size = tuple(run.example_inputs.shape[1:])
    counted = count_flops(slim(run.model, ticket, run.example_inputs), size).macs
    assert counted / run.dense_macs == pytest.approx(ticket.budget.achieved, abs=1e-12)
    assert counted == ticket.budget.slim <= 0.5 * run.dense_macs

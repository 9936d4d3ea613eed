"""Drawing a ticket to a cost budget: the global ranking cut where the slim network meets it.

A :class:`~ebcompress.channels.draw_options.Budget` names a share of the dense network's MACs
or parameters. :func:`cut_to_budget` searches the pruning ratio: it bisects on the ratio,
drawing each candidate by the usual rules (global ranking, ``min_keep``,
``max_group_ratio``, ``round_to``, grouped-convolution slices, all unchanged) and counting
its slim network with the graph's :class:`~ebcompress.channels.cost_model.CostModel`, and
keeps the least-pruned candidate that meets the budget. Every rule only ever removes more
channels as the ratio grows, so the cost falls monotonically with the ratio and the bisection
finds the cut to within 1e-9 of the ratio (about 30 draws, a few milliseconds each).

What the search cannot do is meet a budget more finely than the rules allow: ``round_to``
and grouped convolutions move whole multiples of channels at once, so the least-pruned ticket
within the budget can fall some way below it; the ticket records how far
(``Ticket.budget``). A budget below what the limits allow at all is a :class:`UserError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ebcompress.channels.cost_model import SlimCost
from ebcompress.channels.draw_options import Budget
from ebcompress.channels.ticket import Ticket, TicketBudget
from ebcompress.errors import UserError

#: The largest ratio a draw takes: every channel the limits let go (round(r * N) == N).
MOST = 1.0 - 1e-12
#: The bisection stops once the ratio is known this closely.
RESOLUTION = 1e-9

_FIELDS = {"macs": "prune.target_macs", "params": "prune.target_params"}


def cut_to_budget(
    draw: Callable[[float], Ticket],
    cost: Callable[[Ticket], SlimCost],
    dense: SlimCost,
    budget: Budget,
) -> Ticket:
    """The ticket ``draw(ratio)`` of the smallest ratio whose ``cost`` meets ``budget``
    (``cost(ticket).of(measure) <= fraction * dense.of(measure)``), with its ``budget``
    record; ``draw`` must remove no fewer channels at a larger ratio.

    A budget even the most-pruned ticket misses is a :class:`UserError` naming the share
    that ticket reaches and the fields that move it.
    """
    measure = budget.measure
    total = dense.of(measure)
    limit = budget.fraction * total

    def value(ticket: Ticket) -> int:
        return cost(ticket).of(measure)

    low, high = 0.0, MOST
    best = draw(high)
    reached = value(best)
    if reached > limit:
        kept_dense = len(best.kept_dense)
        raise UserError(
            f"{_FIELDS[measure]}={budget.fraction:g} is out of reach: the most-pruned ticket "
            f"the limits allow keeps {reached / total:.1%} of the dense {_unit(measure)}"
            + (f" ({kept_dense} groups stay dense)" if kept_dense else "")
            + "; raise the target, or prune.max_group_ratio (1.0 = no cap), or lower "
            "prune.min_keep / prune.round_to"
        )
    while high - low > RESOLUTION:
        middle = 0.5 * (low + high)
        ticket = draw(middle)
        spent = value(ticket)
        if spent <= limit:
            high, best, reached = middle, ticket, spent
        else:
            low = middle
    record = TicketBudget(
        measure=measure,
        target=budget.fraction,
        achieved=reached / total,
        dense=int(total),
        slim=int(reached),
    )
    return replace(best, budget=record)


def _unit(measure: str) -> str:
    return "MACs" if measure == "macs" else "parameters"

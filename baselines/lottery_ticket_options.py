"""``prune.lt``: the lottery ticket's own options (torch-free, for the recipe and ``--help``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ebcompress.methods.options import MethodOptions


class LotteryTicketOptions(MethodOptions):
    """``granularity``: ``channel`` slims the network physically, ``unstructured`` masks single
    weights in a dense-shaped network. ``rewind_epoch``: the epoch the survivors are rewound
    to (0 = initialisation)."""

    granularity: Literal["channel", "unstructured"] = "channel"
    rewind_epoch: int = Field(0, ge=0)

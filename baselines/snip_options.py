"""``prune.snip``: SNIP's own options (torch-free, for the recipe and ``--help``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ebcompress.methods.options import MethodOptions


class SnipOptions(MethodOptions):
    """``granularity``: ``channel`` or ``unstructured``, as for the lottery ticket.
    ``batches``: minibatches whose summed gradient gives the connection sensitivity."""

    granularity: Literal["channel", "unstructured"] = "channel"
    batches: int = Field(4, ge=1)

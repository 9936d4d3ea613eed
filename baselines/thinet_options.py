"""``prune.thinet``: ThiNet's own options (torch-free, for the recipe and ``--help``)."""

from __future__ import annotations

from pydantic import Field

from ebcompress.methods.options import MethodOptions


class ThiNetOptions(MethodOptions):
    """``samples``: training images the reconstruction is fitted on;
    ``positions_per_sample``: random (position, filter) pairs drawn per image."""

    samples: int = Field(256, ge=8)
    positions_per_sample: int = Field(8, ge=1)

"""The base of a method's own recipe section, ``prune.<method key>``.

A method that has options of its own (``prune.lt.rewind_epoch``, ``prune.snip.batches``)
declares them in a subclass, in a torch-free module next to the method, and names it in its
catalogue entry (:mod:`ebcompress.methods.catalog`); the recipe schema adds the section.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class MethodOptions(BaseModel):
    """As strict as every recipe section: unknown keys rejected, assignments validated, no
    inf or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

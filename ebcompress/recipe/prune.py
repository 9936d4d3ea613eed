"""The recipe's ``prune`` section: the shared draw options, a MACs / parameter budget, and
one ``prune.<method>`` section per method with options (from the catalogue)."""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ebcompress.channels.draw_options import Budget, DrawOptions
from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS
from ebcompress.recipe.sections import _Section

_DRAW_FIELDS = tuple(f.name for f in fields(DrawOptions) if f.name != "budget")
_TARGETS = {"target_macs": "macs", "target_params": "params"}  # -> DrawOptions.budget


class _SharedPruneConfig(_Section):
    """How the ticket is found. ``ratio`` is the fraction of prunable channels removed.
    ``scope``, ``min_keep``, ``max_group_ratio``, ``round_to`` are :class:`DrawOptions`, with
    its defaults and checks (:meth:`draw_options`); :data:`PruneConfig` adds method sections.
    ``target_macs`` / ``target_params`` (one at most) draw the ticket to a budget instead, a
    fraction of the dense network's MACs / parameters: ``ratio`` is then searched, not used."""

    method: Annotated[str, AfterValidator(METHODS.check)] = "eb"
    ratio: float = Field(0.3, gt=0, lt=1)
    watch_ratios: list[float] = Field(default_factory=list)
    scope: str = DrawOptions.scope
    sparsity: float = Field(1e-4, ge=0)
    epsilon: float = Field(0.1, gt=0, le=1)
    window: int = Field(5, ge=2)
    max_search_epochs: int | None = Field(None, ge=1)
    min_search_epochs: int = Field(0, ge=0)
    learning_margin: float = Field(0.2, gt=0, lt=1)
    min_keep: int = DrawOptions.min_keep
    max_group_ratio: float = DrawOptions.max_group_ratio
    round_to: int | None = DrawOptions.round_to
    target_macs: float | None = None
    target_params: float | None = None
    dense_epochs: int | None = Field(None, ge=0)

    @field_validator(*_DRAW_FIELDS, *_TARGETS)
    @classmethod
    def _draw_option(cls, value: Any, info: ValidationInfo) -> Any:
        try:
            if info.field_name not in _TARGETS:
                DrawOptions(**{info.field_name: value})
            elif value is not None:
                Budget(value, _TARGETS[info.field_name])
        except UserError as exc:  # pydantic reports ValueErrors with the field's path
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _ratios_and_budget(self) -> _SharedPruneConfig:
        bad = [r for r in self.watch_ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"watch_ratios {bad} must each lie in the open interval (0, 1)")
        try:
            budget = self.draw_options().budget
        except UserError as exc:  # both targets given
            raise ValueError(str(exc)) from None
        target = f"target_{budget.measure}" if budget else ""
        if budget and self.watch_ratios:
            raise ValueError(
                f"watch_ratios {self.watch_ratios}: with {target} the ticket is the one meeting "
                "the budget, whatever the ratio; set watch_ratios: []"
            )
        granularity = getattr(getattr(self, self.method, None), "granularity", "channel")
        if budget and granularity != "channel":
            raise ValueError(
                f"{target} slims channels; {self.method}.granularity {granularity!r} masks "
                "weights (no fewer MACs): set it to channel"
            )
        return self

    def draw_options(self) -> DrawOptions:
        """The rules every method draws its ticket by: the one place the shell builds them."""
        budget = Budget.from_targets(self.target_macs, self.target_params)
        return DrawOptions(**{name: getattr(self, name) for name in _DRAW_FIELDS}, budget=budget)

    @model_validator(mode="after")
    def _dense_epochs_for_dense_methods(self) -> _SharedPruneConfig:
        # the methods whose search is a dense training (the catalogue: they share "dense")
        dense = [k for k, info in METHODS.items() if info.shares == "dense"]
        if self.dense_epochs is not None and self.method not in dense:
            raise ValueError(
                f"dense_epochs sets the dense training of {', '.join(dense)}; method "
                f"{self.method!r} has none (eb searches until its ticket emerges, bounded by "
                "max_search_epochs; snip prunes at initialisation): remove it"
            )
        return self


#: The ``prune`` section: the shared fields and ``prune.<key>`` for each method with options.
PruneConfig = create_model(
    "PruneConfig",
    __base__=_SharedPruneConfig,
    __module__=__name__,
    **{k: (i.options, Field(default_factory=i.options)) for k, i in METHODS.items() if i.options},
)

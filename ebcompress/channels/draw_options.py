"""How a ticket is drawn from the ranked channels: one frozen set of options, checked once.

:meth:`ebcompress.channels.graph.ChannelGraph.draw`, :func:`~ebcompress.channels.graph.draw_ticket`,
:class:`ebcompress.EarlyBird` and the baselines all take a :class:`DrawOptions`; the recipe's
``prune`` section builds one (``PruneConfig.draw_options()``). The public functions still
accept the fields as keywords (``draw(0.5, min_keep=2)``) and build one from them. Importing
this module needs no torch (checking values does), so the recipe schema takes its defaults
from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ebcompress.errors import UserError

SCOPES = ("global", "uniform")
MEASURES = ("macs", "params")
_UNITS = {"macs": "MACs", "params": "parameters"}


@dataclass(frozen=True)
class Budget:
    """A cost budget: the slim network keeps at most ``fraction`` of the dense network's
    ``measure`` (``"macs"``: forward MACs as :func:`ebcompress.count_flops` counts them;
    ``"params"``: parameters). A ticket drawn to a budget cuts the global ranking where the
    slim network meets it (:mod:`ebcompress.channels.budget`): the pruning ratio is searched,
    not given. ``Budget(0.5)`` is half the dense MACs.
    """

    fraction: float
    measure: str = "macs"

    def __post_init__(self) -> None:
        from ebcompress.checks import check_number  # needs torch: see DrawOptions

        object.__setattr__(self, "fraction", check_number(self.fraction, "budget fraction"))
        if self.measure not in MEASURES:
            raise UserError(f"budget measure {self.measure!r} must be 'macs' or 'params'")
        if not 0.0 < self.fraction < 1.0:  # also refuses NaN
            raise UserError(
                f"target_{self.measure}={self.fraction} must be in (0, 1) (the fraction of the "
                f"dense network's {_UNITS[self.measure]} the slim one keeps)"
            )

    @classmethod
    def from_targets(cls, macs: float | None = None, params: float | None = None) -> Budget | None:
        """The budget of ``target_macs`` / ``target_params`` (at most one given), or None."""
        if macs is not None and params is not None:
            raise UserError(
                f"target_macs={macs} and target_params={params}: a ticket meets one budget; "
                "set one of them"
            )
        if params is not None:
            return cls(params, "params")
        return None if macs is None else cls(macs, "macs")

    def describe(self) -> str:
        """``"MACs <= 50 % of dense"``: the budget in words."""
        return f"{_UNITS[self.measure]} <= {self.fraction * 100:g} % of dense"


@dataclass(frozen=True)
class DrawOptions:
    """The rules a ticket is drawn by (:meth:`ChannelGraph.draw` says what each one does).

    ``scope``: ``"global"`` ranks all channels together (the paper's rule), ``"uniform"``
    removes the same fraction from every group. ``min_keep``: channels every group keeps at
    least. ``max_group_ratio``: the largest fraction of one group that may be removed (0.9,
    as torch-pruning's ``max_pruning_ratio``; 1.0 is the paper's uncapped rule). ``round_to``:
    round each group's kept count up to a multiple (None: no rounding). ``budget``: a
    :class:`Budget`; with one, the ticket is the least-pruned cut of the ranking (by the
    other rules) whose slim network meets it, and the ``ratio`` given to ``draw`` is unused.

    A value that cannot work is a :class:`UserError` naming the argument, raised on
    construction: a mistake should not cost an epoch of training before the first draw.
    """

    scope: str = "global"
    min_keep: int = 1
    max_group_ratio: float = 0.9
    round_to: int | None = None
    budget: Budget | None = None

    def __post_init__(self) -> None:
        # Imported here: checks needs torch (it also checks modules and tensors), and the
        # recipe schema reads this class's defaults without importing torch.
        from ebcompress.checks import check_instance, check_int, check_number

        # frozen: the checked values (a NumPy int, say) are stored as plain numbers
        object.__setattr__(self, "min_keep", check_int(self.min_keep, "min_keep"))
        cap = check_number(self.max_group_ratio, "max_group_ratio")
        object.__setattr__(self, "max_group_ratio", cap)
        if self.round_to is not None:
            object.__setattr__(self, "round_to", check_int(self.round_to, "round_to"))
        if self.scope not in SCOPES:
            raise UserError(f"scope {self.scope!r} must be 'global' or 'uniform'")
        if not self.min_keep >= 1:
            raise UserError(
                f"min_keep={self.min_keep} must be >= 1 (a group cannot lose all its channels)"
            )
        if not 0.0 < self.max_group_ratio <= 1.0:  # also refuses NaN
            raise UserError(
                f"max_group_ratio={self.max_group_ratio} must be in (0, 1] (the largest "
                "fraction of one group that may be removed; 1.0 = no cap)"
            )
        if self.round_to is not None and not self.round_to >= 1:
            raise UserError(f"round_to={self.round_to} must be >= 1 or None (no rounding)")
        if self.budget is not None:
            check_instance(self.budget, Budget, "budget", how="eb.Budget(0.5) or None")

    def updated(self, **changes: Any) -> DrawOptions:
        """A copy with ``changes`` (fields by keyword) applied and checked; an unknown
        keyword is a TypeError naming the fields."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(
                f"unexpected keyword argument {unknown[0]!r}; the draw options are "
                f"{', '.join(names)}"
            )
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, as a ticket records them in ``extra`` (but the budget: a
        ticket drawn to one records it in its typed ``budget`` field)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "budget"}


def resolve_draw_options(options: DrawOptions | None, name: str = "options") -> DrawOptions:
    """``options``, or the defaults for None; a TypeError naming ``name`` for anything else."""
    if options is None:
        return DrawOptions()
    from ebcompress.checks import check_instance  # needs torch: see DrawOptions.__post_init__

    check_instance(options, DrawOptions, name, how="eb.DrawOptions(scope=..., min_keep=...)")
    return options

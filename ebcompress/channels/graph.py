"""Prunable channel groups, their importance, and drawing a ticket from them.

The groups are torch-pruning's (see :mod:`~ebcompress.channels.groups`: residual-coupled
channels form ONE group), minus those a dry-run slimming finds torch-pruning gets wrong
(:mod:`ebcompress.channels.probe`). The graph is traced once; drawing a mask afterwards only reads
parameter values.

Importance is the Early-Bird / network-slimming criterion, the BatchNorm scale ``|gamma|``
(You et al., ICLR 2020, Sec. 3.2; Liu et al., ICCV 2017). Masks are drawn by ranking all
prunable channels *globally* and removing the smallest fraction ``ratio`` (the paper's rule),
or as many as a cost budget leaves room for (:mod:`ebcompress.channels.budget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.channels.budget import cut_to_budget
from ebcompress.channels.capped import CappedGroupsWarning, capped_summary, warn_capped
from ebcompress.channels.cost_model import CostModel, SlimCost
from ebcompress.channels.draw_options import DrawOptions, resolve_draw_options
from ebcompress.channels.groups import ChannelGroup, same_layers, trace_channel_groups
from ebcompress.channels.probe import find_unslimmable
from ebcompress.channels.ranking import (
    BnGather,
    choose_kept,
    counted_sources,
    global_removal,
    group_floor,
    weight_importance,
)
from ebcompress.channels.ticket import Ticket, structure_fingerprint
from ebcompress.channels.zero_init import is_zero_initialised
from ebcompress.checks import check_batch, check_module, check_number, check_runs
from ebcompress.errors import UserError

__all__ = [
    "CappedGroupsWarning",
    "ChannelGraph",
    "DrawOptions",
    "capped_summary",
    "draw_ticket",
    "warn_capped",
]


class ChannelGraph:
    """Prunable channel groups of a model, found ONCE with ``torch_pruning.DependencyGraph``.

    Groups are listed in the module order of their roots. Module references into ``model``
    are kept so that :meth:`importance` reads the *current* parameter values without tracing
    again; the dependency graph itself (which holds the traced autograd graph) is dropped.

    With ``probe`` (the default) a dry-run slimming of a copy first finds the groups
    torch-pruning would slim wrongly (:func:`ebcompress.channels.probe.find_unslimmable`); they join
    ``kept_dense``, so every ticket drawn here slims. ``probe=False`` skips that cost for
    architectures known to slim cleanly.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        *,
        ignored_layers: Sequence[nn.Module | str] = (),
        probe: bool = True,
    ) -> None:
        """Trace (and probe) ``model`` on ``example_inputs``; any batch size, 1 included.

        ``ignored_layers`` (modules of ``model`` or their names) keep their output channels;
        a container such as ``model.layer1`` stands for all its submodules, as in
        torch-pruning. Their names are kept in :attr:`ignored_layer_names` and recorded in
        every ticket drawn (``Ticket.ignored_layers``), so :func:`ebcompress.channels.slim.slim` and
        :func:`ebcompress.load` replay them. A layer that is not in ``model`` is a UserError.
        """
        check_module(model, "model")
        check_runs(model, check_batch(example_inputs, "example_inputs"), "example_inputs")
        layers = same_layers(model, model, ignored_layers)  # names -> modules; unknown: error
        names = {module: name for name, module in model.named_modules()}
        self.ignored_layer_names: tuple[str, ...] = tuple(names[m] for m in layers)
        dense = find_unslimmable(model, example_inputs, layers) if probe else {}
        _, self._handles, self.kept_dense = trace_channel_groups(
            model, example_inputs, layers, dense=dense
        )
        self.input_shape = tuple(int(d) for d in example_inputs.shape[1:])
        if not self._handles:
            why = "; ".join(f"{k}: {v}" for k, v in list(self.kept_dense.items())[:2])
            raise UserError(
                f"model {type(model).__name__} has no prunable channel groups (no conv/linear "
                "layer whose output channels can be removed without changing the output"
                + (f"; kept dense: {why}" if why else "")
                + ")"
            )
        self.groups: list[ChannelGroup] = [h.info for h in self._handles]
        self._widths = np.array([group.width for group in self.groups])
        self._starts = np.concatenate([[0], np.cumsum(self._widths)[:-1]])
        self._names = names
        self.cost_model = CostModel(model, example_inputs, self._handles, self._starts.tolist())
        self.exclude_from_importance(
            tuple(names[bn] for bn in self.bn_modules() if is_zero_initialised(bn))
        )

    def exclude_from_importance(self, bn_names: Sequence[str]) -> None:
        """Leave these BatchNorms out of their groups' mean ``|gamma|`` wherever the groups'
        other BNs scale all their channels; :attr:`zero_init_bns` lists those actually left
        out. Called at construction with the zero-initialised ones, and by
        :meth:`ebcompress.EarlyBird.load_state_dict` to restore a search's choice."""
        wanted = set(bn_names)
        ignored = {bn for bn in self.bn_modules() if self._names[bn] in wanted}
        self._gather = BnGather(
            self._handles, self._starts.tolist(), self.bn_modules(), ignored=ignored
        )
        left_out = {
            bn
            for handle in self._handles
            for bn, _, _ in handle.bn_sources
            if bn in ignored and counted_sources(handle, ignored) is not handle.bn_sources
        }
        self.zero_init_bns: tuple[str, ...] = tuple(
            self._names[bn] for bn in self.bn_modules() if bn in left_out
        )

    @property
    def widths(self) -> dict[str, int]:
        return {group.name: group.width for group in self.groups}

    @property
    def fingerprint(self) -> str:
        return structure_fingerprint(self.widths)

    def cost(self, ticket: Ticket | None = None) -> SlimCost:
        """One sample's forward MACs and the parameters of ``ticket``'s slim network (None:
        the dense one), counted from the groups without slimming
        (:class:`~ebcompress.channels.cost_model.CostModel`: ``count_flops``' numbers for
        the layers it models; after :meth:`calibrate_cost` the rest of that count is added
        at its dense value)."""
        if ticket is None:
            return self.cost_model.dense
        if ticket.fingerprint != self.fingerprint:
            raise ValueError("cost: the ticket was drawn from another network")
        return self.cost_model.cost(ticket.mask())

    def calibrate_cost(self, dense_macs: int) -> None:
        """Give the dense network's MACs as ``count_flops`` counts them; the part no modelled
        layer accounts for (functional pooling, attention products) is then held constant,
        so budgets are shares of that count."""
        self.cost_model.calibrate(dense_macs)

    def bn_modules(self) -> list[_BatchNorm]:
        """The affine BatchNorms of all prunable groups, each once (for the BN-L1 regulariser)."""
        seen: dict[_BatchNorm, None] = {}
        for handle in self._handles:
            seen.update((bn, None) for bn, _, _ in handle.bn_sources)
        return list(seen)

    @torch.no_grad()
    def importance(self) -> dict[str, torch.Tensor]:
        """Per group, per channel importance (float32, on the CPU, ``len == width``).

        ``|gamma|`` averaged over every BatchNorm of the group (densely connected nets scale a
        channel in several BNs), leaving out BNs that were zero-initialised when the graph was
        traced (``zero_init_bns``; :mod:`ebcompress.channels.zero_init`) wherever the group's other
        BNs scale all its channels. A group without BN falls back to the L1 norm of its root's
        output-channel weights, divided by its mean; those values are not comparable with BN
        scales, which is why :meth:`draw` prunes such groups on their own.
        """
        flat = self._flat_importance()
        return dict(zip(self.widths, flat.split(self._widths.tolist()), strict=True))

    @torch.no_grad()
    def _flat_importance(self) -> torch.Tensor:
        flat = self._gather()
        for handle, start in zip(self._handles, self._starts.tolist(), strict=True):
            if not handle.bn_sources:
                flat[start : start + handle.info.width] = weight_importance(handle)
        return flat.cpu()  # one device sync

    def draw(
        self,
        ratio: float,
        options: DrawOptions | None = None,
        *,
        epoch: int | None = None,
        importance: dict[str, torch.Tensor] | None = None,
        model_name: str | None = None,
        warn: bool = True,
        **changes: Any,
    ) -> Ticket:
        """Draw a ticket removing the fraction ``ratio`` of the prunable channels, by the rules
        of ``options`` (default :class:`DrawOptions`) with ``changes`` applied: any of its
        fields by keyword, so ``draw(0.5, min_keep=2)`` works as well.

        ``scope="global"`` (the paper's) ranks all channels together by (importance, global
        channel index) and removes the first ``round(ratio * N)``; the index tie-break keeps
        the rule exact when every gamma is equal, as at initialisation. Groups without BN are
        pruned at ``ratio`` within themselves (their weight-magnitude scores are not
        comparable with BN scales) and ``N`` counts only the ranked groups. ``"uniform"``
        removes ``round(ratio * width)`` from each group. An ``importance`` override (e.g.
        SNIP or weight-magnitude scores from a baseline) is ranked globally over all groups
        as given, so its scores must be comparable across groups (normalise them per group, as
        :func:`ebcompress.baselines._common.channel_scores` does).

        No group is emptied: each keeps at least ``min_keep`` channels and at least the
        fraction ``1 - max_group_ratio`` of its width (its most important ones); the global
        rule then removes the next-ranked channels elsewhere. The cap is torch-pruning's
        ``max_pruning_ratio``: without it one group whose scales all start small (a residual
        stream whose last BNs were zero-initialised, say) can lose all but one channel and take
        the network's accuracy with it. ``max_group_ratio=1.0`` is the paper's uncapped rule.
        Groups that end at either limit are listed in ``Ticket.capped`` and, with ``warn``, in
        a :class:`CappedGroupsWarning`. ``round_to`` rounds each group's kept count UP to a
        multiple (capped at the width). A group feeding a grouped convolution keeps the same
        positions in each slice, so its count is rounded to a multiple of the slice count; only
        then can the total differ from ``round(ratio*N)`` (besides the limits).

        With ``budget`` (a :class:`~ebcompress.channels.draw_options.Budget` among the
        options), ``ratio`` is not used: the ticket is the least-pruned cut of the same
        ranking, by the same rules, whose slim network keeps at most the budget's share of
        the dense MACs or parameters (:meth:`cost`); its ``ratio`` is the one found and its
        ``budget`` records the target and the share achieved.
        """
        _check_ratio(ratio)
        rules = resolve_draw_options(options).updated(**changes)
        scores = self._scores(importance)
        custom = importance is not None

        def cut(at: float) -> Ticket:
            return self._cut(at, rules, scores, custom, epoch=epoch, model_name=model_name)

        if rules.budget is None:
            ticket = cut(ratio)
        else:
            ticket = cut_to_budget(cut, self.cost, self.cost_model.dense, rules.budget)
        if warn:
            warn_capped(ticket)
        return ticket

    def _cut(
        self,
        ratio: float,
        rules: DrawOptions,
        scores: np.ndarray,
        custom: bool,
        *,
        epoch: int | None,
        model_name: str | None,
    ) -> Ticket:
        """The ticket removing ``ratio`` of the ranked ``scores`` by ``rules`` (see draw)."""
        scope, min_keep, round_to = rules.scope, rules.min_keep, rules.round_to
        ranked = np.array(
            [scope == "global" and (custom or bool(h.bn_sources)) for h in self._handles]
        )
        removed = np.zeros(scores.size, dtype=bool)
        floors = np.array([group_floor(h, min_keep, rules.max_group_ratio) for h in self._handles])
        # channels each group would lose without the floors, to tell a binding limit apart
        # from a group that merely ends where its floor happens to be
        wanted = np.round(ratio * self._widths).astype(np.int64)
        if ranked.any():
            pool = np.flatnonzero(np.repeat(ranked, self._widths))
            removed[pool], wanted[ranked] = global_removal(
                scores[pool], self._widths[ranked], floors[ranked], ratio
            )
        kept, capped = {}, {}
        for handle, start, in_pool, floor, want in zip(
            self._handles, self._starts, ranked, floors.tolist(), wanted.tolist(), strict=True
        ):
            name, width = handle.info.name, handle.info.width
            segment = slice(start, start + width)
            if in_pool and handle.unit == 1 and round_to is None:
                kept[name] = tuple(np.flatnonzero(~removed[segment]).tolist())
            else:
                n_removed = int(removed[segment].sum()) if in_pool else round(ratio * width)
                kept[name] = choose_kept(
                    handle, scores[segment], width - n_removed, floor, round_to
                )
            if want > width - floor:  # the limit bound, whatever round_to then added
                at_min_keep = floor == group_floor(handle, min_keep, 1.0)
                capped[name] = "min_keep" if at_min_keep else "max_group_ratio"
        return Ticket(
            kept=kept,
            widths=self.widths,
            ratio=float(ratio),
            epoch=epoch,
            importance="custom" if custom else "bn_gamma",
            model_name=model_name,
            fingerprint=self.fingerprint,
            ignored_layers=self.ignored_layer_names,
            capped=capped,
            zero_init_bns=() if custom else self.zero_init_bns,
            input_shape=self.input_shape,
            kept_dense=dict(self.kept_dense),
            extra=rules.to_dict(),
        )

    def _scores(self, importance: dict[str, torch.Tensor] | None) -> np.ndarray:
        """All channels' importance as one float64 array, slice-averaged where a group
        repeats its pattern over grouped-convolution slices."""
        if importance is None:
            flat = self._flat_importance()
        else:
            parts = []
            for group in self.groups:
                if group.name not in importance:
                    raise ValueError(f"importance: no scores for channel group {group.name!r}")
                part = torch.as_tensor(importance[group.name]).detach().reshape(-1).cpu()
                if part.numel() != group.width:
                    raise ValueError(
                        f"importance[{group.name!r}] has {part.numel()} values, "
                        f"the group is {group.width} wide"
                    )
                parts.append(part.double())
            flat = torch.cat(parts)
        scores = flat.double().numpy()
        finite = np.isfinite(scores)
        if not finite.all():
            bad = int(np.searchsorted(self._starts, np.flatnonzero(~finite)[0], side="right")) - 1
            raise UserError(
                f"importance of channel group {self.groups[bad].name!r} is not finite "
                "(diverged training?); lower the learning rate or the sparsity penalty"
            )
        for handle, start in zip(self._handles, self._starts, strict=True):
            if handle.unit > 1:
                segment = scores[start : start + handle.info.width]
                segment[:] = np.tile(segment.reshape(handle.unit, -1).mean(axis=0), handle.unit)
        return scores


def draw_ticket(
    model: nn.Module,
    ratio: float,
    options: DrawOptions | None = None,
    *,
    example_inputs: torch.Tensor,
    ignored_layers: Sequence[nn.Module | str] = (),
    **changes: Any,
) -> Ticket:
    """One-shot :meth:`ChannelGraph.draw` on ``model`` (traces the model once), by
    ``options`` with ``changes`` (its fields by keyword) applied, as there.

    ``ignored_layers`` are :class:`ChannelGraph`'s: kept dense and recorded in the ticket.
    """
    _check_ratio(ratio)  # the options and the ratio before the trace
    rules = resolve_draw_options(options).updated(**changes)
    graph = ChannelGraph(model, example_inputs, ignored_layers=ignored_layers)
    return graph.draw(ratio, rules)


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= check_number(ratio, "pruning ratio") < 1.0:
        raise UserError(
            f"pruning ratio {ratio} must be in [0, 1) (the fraction of channels removed)"
        )

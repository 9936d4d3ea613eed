"""Prunable channel groups, their importance, and drawing a ticket from them.

The groups are torch-pruning's (see :mod:`~ebcompress.channels.groups`: residual-coupled
channels form ONE group), minus those a dry-run slimming finds torch-pruning gets wrong
(:mod:`ebcompress.channels.probe`). The graph is traced once; drawing a mask afterwards only reads
parameter values.

Importance is the Early-Bird / network-slimming criterion, the BatchNorm scale ``|gamma|``
(You et al., ICLR 2020, Sec. 3.2; Liu et al., ICCV 2017). Masks are drawn by ranking all
prunable channels *globally* and removing the smallest fraction ``ratio`` (the paper's rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.channels.capped import CappedGroupsWarning, capped_summary, warn_capped
from ebcompress.channels.groups import ChannelGroup, GroupHandle, same_layers, trace_channel_groups
from ebcompress.channels.probe import find_unslimmable
from ebcompress.channels.ticket import Ticket, structure_fingerprint
from ebcompress.channels.zero_init import is_zero_initialised
from ebcompress.errors import UserError

__all__ = ["CappedGroupsWarning", "ChannelGraph", "capped_summary", "draw_ticket", "warn_capped"]

SCOPES = ("global", "uniform")
#: Keep at least 10 % of every group unless asked otherwise (torch-pruning's max_pruning_ratio).
DEFAULT_MAX_GROUP_RATIO = 0.9


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
        self._gather = _BnGather(
            self._handles, self._starts.tolist(), self.bn_modules(), ignored=ignored
        )
        left_out = {
            bn
            for handle in self._handles
            for bn, _, _ in handle.bn_sources
            if bn in ignored and _counted_sources(handle, ignored) is not handle.bn_sources
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
                flat[start : start + handle.info.width] = _weight_importance(handle)
        return flat.cpu()  # one device sync

    def draw(
        self,
        ratio: float,
        *,
        scope: str = "global",
        min_keep: int = 1,
        max_group_ratio: float = DEFAULT_MAX_GROUP_RATIO,
        round_to: int | None = None,
        epoch: int | None = None,
        importance: dict[str, torch.Tensor] | None = None,
        model_name: str | None = None,
        warn: bool = True,
    ) -> Ticket:
        """Draw a ticket removing the fraction ``ratio`` of the prunable channels.

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
        """
        _check_draw_args(ratio, scope, min_keep, round_to, max_group_ratio)
        scores = self._scores(importance)
        ranked = np.array(
            [
                scope == "global" and (importance is not None or bool(h.bn_sources))
                for h in self._handles
            ]
        )
        removed = np.zeros(scores.size, dtype=bool)
        floors = np.array([_floor(h, min_keep, max_group_ratio) for h in self._handles])
        # channels each group would lose without the floors, to tell a binding limit apart
        # from a group that merely ends where its floor happens to be
        wanted = np.round(ratio * self._widths).astype(np.int64)
        if ranked.any():
            pool = np.flatnonzero(np.repeat(ranked, self._widths))
            removed[pool], wanted[ranked] = _global_removal(
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
                kept[name] = _choose(handle, scores[segment], width - n_removed, floor, round_to)
            if want > width - floor:  # the limit bound, whatever round_to then added
                at_min_keep = floor == _floor(handle, min_keep, 1.0)
                capped[name] = "min_keep" if at_min_keep else "max_group_ratio"
        ticket = Ticket(
            kept=kept,
            widths=self.widths,
            ratio=float(ratio),
            epoch=epoch,
            importance="bn_gamma" if importance is None else "custom",
            model_name=model_name,
            fingerprint=self.fingerprint,
            ignored_layers=self.ignored_layer_names,
            capped=capped,
            zero_init_bns=self.zero_init_bns if importance is None else (),
            extra={
                "scope": scope,
                "min_keep": min_keep,
                "max_group_ratio": max_group_ratio,
                "round_to": round_to,
                "input_shape": list(self.input_shape),  # lets slim() trace without an input
                "kept_dense": dict(self.kept_dense),
            },
        )
        if warn:
            warn_capped(ticket)
        return ticket

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
    *,
    example_inputs: torch.Tensor,
    scope: str = "global",
    min_keep: int = 1,
    max_group_ratio: float = DEFAULT_MAX_GROUP_RATIO,
    round_to: int | None = None,
    ignored_layers: Sequence[nn.Module | str] = (),
) -> Ticket:
    """One-shot :meth:`ChannelGraph.draw` on ``model`` (traces the model once).

    ``ignored_layers`` are :class:`ChannelGraph`'s: kept dense and recorded in the ticket.
    """
    graph = ChannelGraph(model, example_inputs, ignored_layers=ignored_layers)
    return graph.draw(
        ratio, scope=scope, min_keep=min_keep, max_group_ratio=max_group_ratio, round_to=round_to
    )


def _check_draw_args(
    ratio: float, scope: str, min_keep: int, round_to: int | None, max_group_ratio: float
) -> None:
    if not 0.0 <= ratio < 1.0:
        raise UserError(
            f"pruning ratio {ratio} must be in [0, 1) (the fraction of channels removed)"
        )
    check_draw_options(scope, min_keep, round_to, max_group_ratio)


def check_draw_options(
    scope: str, min_keep: int, round_to: int | None, max_group_ratio: float
) -> None:
    """UserError for a draw option :meth:`ChannelGraph.draw` would refuse (callers that draw
    later, such as :class:`ebcompress.EarlyBird`, check before training starts)."""
    if not 0.0 < max_group_ratio <= 1.0:
        raise UserError(
            f"max_group_ratio={max_group_ratio} must be in (0, 1] (the largest fraction of one "
            "group that may be removed; 1.0 = no cap)"
        )
    if scope not in SCOPES:
        raise UserError(f"pruning scope {scope!r} must be one of {', '.join(SCOPES)}")
    if min_keep < 1:
        raise UserError(f"min_keep={min_keep} must be >= 1 (a group cannot lose all its channels)")
    if round_to is not None and round_to < 1:
        raise UserError(f"round_to={round_to} must be >= 1 or null")


class _BnGather:
    """Mean ``|gamma|`` of every group channel in a few tensor ops (EB draws every epoch).

    All BN scales are concatenated; ``source[k]`` is the position of a BN channel in that
    vector and ``target[k]`` the group channel it scales, over all groups at once.
    """

    def __init__(
        self,
        handles: list[GroupHandle],
        starts: list[int],
        bns: list[_BatchNorm],
        ignored: set[_BatchNorm] | frozenset[_BatchNorm] = frozenset(),
    ):
        self._bns = bns
        sizes = [bn.num_features for bn in bns]
        offsets = dict(zip(bns, np.cumsum([0, *sizes])[:-1].tolist(), strict=True))
        sources, targets = [], []
        for handle, start in zip(handles, starts, strict=True):
            width = handle.info.width
            for bn, bn_index, root_index in _counted_sources(handle, ignored):
                sources.append(
                    offsets[bn] + (torch.arange(width) if bn_index is None else bn_index)
                )
                targets.append(start + (torch.arange(width) if root_index is None else root_index))
        self._size = starts[-1] + handles[-1].info.width
        self._source = torch.cat(sources) if sources else torch.zeros(0, dtype=torch.long)
        self._target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
        # groups without BN get weight magnitudes instead; 1 avoids dividing by zero there
        self._count = torch.bincount(self._target, minlength=self._size).clamp(min=1).float()
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __call__(self) -> torch.Tensor:
        if not self._bns:
            return torch.zeros(self._size)
        gammas = torch.cat([bn.weight.detach() for bn in self._bns]).abs().float()
        device = gammas.device
        if device not in self._on:
            self._on[device] = tuple(
                t.to(device) for t in (self._source, self._target, self._count)
            )
        source, target, count = self._on[device]
        return gammas.new_zeros(self._size).index_add_(0, target, gammas[source]) / count


def _counted_sources(
    handle: GroupHandle, ignored: set[_BatchNorm] | frozenset[_BatchNorm]
) -> tuple[tuple[_BatchNorm, torch.Tensor | None, torch.Tensor | None], ...]:
    """The group's BN sources without the ``ignored`` (zero-initialised) ones, as long as the
    rest still scale every channel of the group; otherwise all of them."""
    kept = tuple(source for source in handle.bn_sources if source[0] not in ignored)
    width = handle.info.width
    cover = torch.zeros(width)
    for _, _, root_index in kept:
        cover += 1 if root_index is None else torch.bincount(root_index, minlength=width)
    return kept if kept and bool((cover > 0).all()) else handle.bn_sources


def _weight_importance(handle: GroupHandle) -> torch.Tensor:
    l1 = torch.linalg.vector_norm(handle.root.weight.detach().float().flatten(1), ord=1, dim=1)
    mean = l1.mean()
    return l1 / mean if mean > 0 else l1


def _floor(handle: GroupHandle, min_keep: int, max_group_ratio: float) -> int:
    """The fewest channels a group may keep: ``min_keep`` and ``(1 - max_group_ratio)`` of
    its width, in whole slices, never more than the width."""
    width = handle.info.width
    # the epsilon keeps e.g. (1 - 0.9) * 10 = 1.0000000000000002 from rounding up to 2
    share = math.ceil((1.0 - max_group_ratio) * width - 1e-9)
    return min(width, handle.unit * math.ceil(max(min_keep, share) / handle.unit))


def _global_removal(
    values: np.ndarray, widths: np.ndarray, floors: np.ndarray, ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Which of the concatenated channels of groups ``widths`` the global ranking removes,
    and how many of each group's channels it would remove without the floors.

    The ``round(ratio * N)`` channels first in ascending (importance, index) order, skipping
    those a group needs to keep ``floors`` channels.
    """
    owner = np.repeat(np.arange(widths.size, dtype=np.int32), widths)
    order = np.argsort(values, kind="stable")  # stable: ties go by channel index
    owner_sorted = owner[order]
    # each channel's rank within its own group, in ranking order
    by_owner = np.argsort(owner_sorted, kind="stable")
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    rank_in_group = np.empty_like(by_owner)
    rank_in_group[by_owner] = np.arange(values.size) - starts[owner_sorted[by_owner]]
    caps = widths - np.minimum(widths, floors)
    eligible = np.flatnonzero(rank_in_group < caps[owner_sorted])
    count = round(ratio * values.size)
    removed = np.zeros(values.size, dtype=bool)
    removed[order[eligible[:count]]] = True
    return removed, np.bincount(owner_sorted[:count], minlength=widths.size)


def _choose(
    handle: GroupHandle, score: np.ndarray, n_keep: int, floor: int, round_to: int | None
) -> tuple[int, ...]:
    """The ``n_keep`` most important channels of a group, at least ``floor`` (a multiple of
    the slice count), after round_to and slices."""
    unit, width = handle.unit, handle.info.width
    size = width // unit
    keep = max(round(n_keep / unit), floor // unit)
    if round_to is not None:
        step = round_to // math.gcd(round_to, unit)
        keep = math.ceil(keep / step) * step
    keep = min(keep, size)
    per_slice = score[:size]  # slices share their scores (see ChannelGraph._scores)
    order = np.argsort(per_slice, kind="stable")  # the global ranking's order
    positions = np.sort(order[size - keep :])
    return tuple((positions[None, :] + size * np.arange(unit)[:, None]).reshape(-1).tolist())

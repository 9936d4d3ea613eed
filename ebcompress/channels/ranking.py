"""The arithmetic behind :class:`~ebcompress.channels.graph.ChannelGraph`: importance and
selection, on the traced groups, with no tracing of their own.

:class:`BnGather` averages ``|gamma|`` per group channel in a few tensor ops (EB draws every
epoch), :func:`weight_importance` scores a group without BatchNorm, :func:`group_floor` is
the fewest channels a group may keep, :func:`global_removal` is the global ranking's cut and
:func:`choose_kept` a group's own choice (``round_to``, grouped-convolution slices).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.channels.groups import GroupHandle


class BnGather:
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
            for bn, bn_index, root_index in counted_sources(handle, ignored):
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


def counted_sources(
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


def weight_importance(handle: GroupHandle) -> torch.Tensor:
    l1 = torch.linalg.vector_norm(handle.root.weight.detach().float().flatten(1), ord=1, dim=1)
    mean = l1.mean()
    return l1 / mean if mean > 0 else l1


def group_floor(handle: GroupHandle, min_keep: int, max_group_ratio: float) -> int:
    """The fewest channels a group may keep: ``min_keep`` and ``(1 - max_group_ratio)`` of
    its width, in whole slices, never more than the width."""
    width = handle.info.width
    # the epsilon keeps e.g. (1 - 0.9) * 10 = 1.0000000000000002 from rounding up to 2
    share = math.ceil((1.0 - max_group_ratio) * width - 1e-9)
    return min(width, handle.unit * math.ceil(max(min_keep, share) / handle.unit))


def global_removal(
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


def choose_kept(
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

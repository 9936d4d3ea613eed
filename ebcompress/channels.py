"""Prunable channel groups, their importance, and drawing a ticket from them.

A *channel group* is a set of channels that must be removed together: the output channels of
one convolution or linear layer plus everything torch-pruning's ``DependencyGraph`` couples to
them (the BatchNorm after it, residual additions, depthwise convolutions, concatenations, the
consumers' input channels). Residual-coupled channels therefore form ONE group. The graph is
traced once; drawing a mask afterwards only reads parameter values.

Importance is the Early-Bird / network-slimming criterion, the BatchNorm scale ``|gamma|``
(You et al., ICLR 2020, Sec. 3.2; Liu et al., ICCV 2017). Masks are drawn by ranking all
prunable channels *globally* and removing the smallest fraction ``ratio`` (the paper's rule).

Never pruned: the classifier head and every channel that reaches the model's output — a group
whose pruning would change an output's shape is skipped, which covers timm's
``get_classifier()``, torchvision's last ``nn.Linear``, a final convolutional classifier and
``num_classes=0`` feature extractors alike.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch_pruning import ops

from ebcompress.errors import UserError
from ebcompress.ticket import Ticket, structure_fingerprint

SCOPES = ("global", "uniform")

# torch-pruning's stand-ins for parameter-free tensor ops: they carry channels through unchanged
# (or re-index them, which tp's index mapping tracks), so masking and slimming agree across them.
_PASS_THROUGH = {
    ops.OPTYPE.ELEMENTWISE,
    ops.OPTYPE.CONCAT,
    ops.OPTYPE.SPLIT,
    ops.OPTYPE.RESHAPE,
    ops.OPTYPE.SLICE,
    ops.OPTYPE.EXPAND,
    ops.OPTYPE.UNBIND,
}
_LAYER_TYPES = {
    ops.OPTYPE.CONV,
    ops.OPTYPE.DEPTHWISE_CONV,
    ops.OPTYPE.LINEAR,
    ops.OPTYPE.BN,
    ops.OPTYPE.PRELU,
}


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel group, named after its root module."""

    name: str  # the conv/linear whose OUTPUT channels define the group
    width: int  # dense channel count
    bn_names: tuple[str, ...]  # BatchNorms whose channels are (a slice of) these channels
    member_names: tuple[str, ...]  # every module touched when this group is pruned


@dataclass(frozen=True)
class GroupHandle:
    """What the library needs about a group besides its description (module references).

    ``unit`` is the number of equal slices the kept pattern must repeat over: grouped
    convolutions keep the same positions in each of their groups (as torch-pruning's pruners
    do), so a group feeding a ``groups=g`` convolution has ``unit`` a multiple of ``g``.
    ``bn_sources`` holds ``(bn, bn_index, root_index)`` per BatchNorm: channel ``bn_index[j]``
    of ``bn`` is channel ``root_index[j]`` of the group (``None``: the identity).
    ``aligned`` are the modules whose own channels are exactly the group's (for verification).
    """

    info: ChannelGroup
    root: nn.Module
    unit: int
    bn_sources: tuple[tuple[_BatchNorm, torch.Tensor | None, torch.Tensor | None], ...]
    aligned: tuple[nn.Module, ...]


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def first_sample(example_inputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A batch of one on the model's device: the structure does not depend on the batch."""
    return example_inputs[:1].to(model_device(model))


@contextlib.contextmanager
def modes_preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag afterwards (torch-pruning sets eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _all_parameters_traced(model: nn.Module) -> Iterator[None]:
    """torch-pruning follows autograd: a frozen layer would vanish from the graph (and
    silently split the groups around it), so every parameter requires grad while tracing."""
    frozen = [param for param in model.parameters() if not param.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


def out_width(module: nn.Module) -> int | None:
    """The output-channel count of a layer torch-pruning can prune, else None."""
    for attr in ("out_channels", "out_features", "num_features", "num_parameters"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return None


class ChannelTrace(NamedTuple):
    """What one torch-pruning trace found: the graph, the prunable groups, and the groups
    kept dense because a layer in them cannot be channel-pruned (root name -> reason)."""

    graph: tp.DependencyGraph
    handles: list[GroupHandle]
    kept_dense: dict[str, str]


def trace_channel_groups(
    model: nn.Module, example_inputs: torch.Tensor, ignored_layers: Sequence[nn.Module] = ()
) -> ChannelTrace:
    """Trace ``model`` with torch-pruning and describe its prunable groups in module order.

    The one tracing step behind :class:`ChannelGraph`, :func:`ebcompress.slim.slim` and
    :func:`ebcompress.slim.masked_equivalent`, so that all three name the same groups. The
    model's train/eval flags and ``requires_grad`` flags are restored; its values untouched.

    A group that touches a layer ebcompress cannot slim exactly (LayerNorm, GroupNorm, a bare
    scaling parameter, a transposed conv, a grouped conv fed by a concatenation) is not
    pruned at all: it is listed in ``kept_dense`` with the layer and the reason, so reports
    can say which channels stay, and the rest of the network is still slimmed. Nothing is
    ever pruned in part of a group.
    """
    order = {module: i for i, (_, module) in enumerate(model.named_modules())}
    names: dict[nn.Module | nn.Parameter, str] = {m: name for name, m in model.named_modules()}
    with modes_preserved(model), _all_parameters_traced(model), torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, first_sample(example_inputs, model), verbose=False
        )
        groups = graph.get_all_groups(
            ignored_layers=list(ignored_layers),
            root_module_types=(ops.TORCH_CONV, ops.TORCH_LINEAR),
        )
        names.update((param, name) for name, param in model.named_parameters())
        handles, kept_dense = [], {}
        for group in groups:
            try:
                handle = _describe(graph, group, names, order)
            except _Unsupported as exc:
                kept_dense[names.get(group[0].dep.target.module, str(group[0].dep.target))] = str(
                    exc
                )
                continue
            if handle is not None:
                handles.append(handle)
    handles.sort(key=lambda handle: order[handle.root])
    return ChannelTrace(graph, handles, kept_dense)


class _Unsupported(Exception):
    """A group holds a layer that cannot be channel-pruned exactly; the group stays dense."""


def _describe(
    graph: tp.DependencyGraph, group: tp.Group, names: dict, order: dict
) -> GroupHandle | None:
    """A handle for one tp group, or None when the group reaches the model output."""
    if any(
        not item.dep.target.outputs and graph.is_out_channel_pruning_fn(item.dep.handler)
        for item in group
    ):
        return None  # a node nothing consumes produces a model output: its shape is fixed
    width = len(group[0].idxs)
    for item in group:
        _check_supported(item.dep.target, names)
    aligned = []
    unit = 1
    bn_sources = []
    for item in group:
        module, kind = item.dep.target.module, item.dep.target.type
        if kind in _PASS_THROUGH:
            continue
        identity = item.idxs == item.root_idxs and len(item.idxs) == width
        if (
            identity
            and out_width(module) == width
            and graph.is_out_channel_pruning_fn(item.dep.handler)
        ):
            aligned.append(module)
        if kind == ops.OPTYPE.CONV and module.groups > 1:
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            channels = module.out_channels if is_out else module.in_channels
            if not (identity and channels == width):
                raise _Unsupported(
                    f"layer {names[module]!r}: a grouped convolution fed by a concatenation"
                )
            unit = math.lcm(unit, module.groups)
        if kind == ops.OPTYPE.BN and module.affine:
            bn_index = torch.as_tensor(item.idxs, dtype=torch.long)
            root_index = torch.as_tensor(item.root_idxs, dtype=torch.long)
            trivial = identity and module.num_features == width and item.idxs == list(range(width))
            bn_sources.append((module, None, None) if trivial else (module, bn_index, root_index))
    cover = torch.zeros(width)
    for _, _, root_index in bn_sources:
        cover += 1 if root_index is None else torch.bincount(root_index, minlength=width)
    if bool((cover == 0).any()):
        bn_sources = []  # a channel no BN scales: BN |gamma| cannot rank this group
    # The earliest aligned conv/linear in module order names the group, whichever one tp
    # happened to start from, so the name is the same on every copy of the model.
    roots = [m for m in aligned if isinstance(m, (ops.TORCH_CONV, ops.TORCH_LINEAR))]
    if not roots:  # e.g. channels only reachable through index mappings (res2net splits)
        raise _Unsupported("no conv/linear layer produces exactly these channels")
    root = min(roots, key=order.get)
    members = sorted(
        {m for m in (item.dep.target.module for item in group) if m in order}, key=order.get
    )
    info = ChannelGroup(
        name=names[root],
        width=width,
        bn_names=tuple(names[m] for m in members if isinstance(m, _BatchNorm)),
        member_names=tuple(names[m] for m in members),
    )
    return GroupHandle(info, root, unit, tuple(bn_sources), tuple(aligned))


def _check_supported(node: tp.Node, names: dict) -> None:
    module, kind = node.module, node.type
    if kind in _PASS_THROUGH:
        return
    name = names.get(module, node.name)
    if kind == ops.OPTYPE.PARAMETER:
        raise _Unsupported(f"parameter {name!r} is not inside a layer torch-pruning knows")
    if kind not in _LAYER_TYPES or getattr(module, "transposed", False):
        raise _Unsupported(
            f"layer {name!r} ({type(module).__name__}) cannot be channel-pruned "
            "(supported: Conv, Linear, BatchNorm, PReLU)"
        )


class ChannelGraph:
    """Prunable channel groups of a model, found ONCE with ``torch_pruning.DependencyGraph``.

    Groups are listed in the module order of their roots. Module references into ``model``
    are kept so that :meth:`importance` reads the *current* parameter values without tracing
    again; the dependency graph itself (which holds the traced autograd graph) is dropped.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        *,
        ignored_layers: Sequence[nn.Module] = (),
    ) -> None:
        _, self._handles, self.kept_dense = trace_channel_groups(
            model, example_inputs, ignored_layers
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
        self._gather = _BnGather(self._handles, self._starts.tolist(), self.bn_modules())

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
        channel in several BNs). A group without BN falls back to the L1 norm of its root's
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
        round_to: int | None = None,
        epoch: int | None = None,
        importance: dict[str, torch.Tensor] | None = None,
        model_name: str | None = None,
    ) -> Ticket:
        """Draw a ticket removing the fraction ``ratio`` of the prunable channels.

        ``scope="global"`` (the paper's) ranks all channels together by (importance, global
        channel index) and removes the first ``round(ratio * N)``; the index tie-break keeps
        the rule exact when every gamma is equal, as at initialisation. Groups without BN are
        pruned at ``ratio`` within themselves (their weight-magnitude scores are not
        comparable with BN scales) and ``N`` counts only the ranked groups. ``"uniform"``
        removes ``round(ratio * width)`` from each group. An ``importance`` override (e.g.
        SNIP or weight-magnitude scores from a baseline) is ranked globally over all groups.

        No group is emptied: each keeps at least ``min_keep`` channels (its most important
        ones); the global rule then removes the next-ranked channels elsewhere. ``round_to``
        rounds each group's kept count UP to a multiple (capped at the width). A group feeding
        a grouped convolution keeps the same positions in each slice, so its count is rounded
        to a multiple of the slice count; only then can the total differ from ``round(ratio*N)``.
        """
        _check_draw_args(ratio, scope, min_keep, round_to)
        scores = self._scores(importance)
        ranked = np.array(
            [
                scope == "global" and (importance is not None or bool(h.bn_sources))
                for h in self._handles
            ]
        )
        removed = np.zeros(scores.size, dtype=bool)
        if ranked.any():
            floors = np.array([_floor(h, min_keep) for h in self._handles])
            pool = np.flatnonzero(np.repeat(ranked, self._widths))
            removed[pool] = _global_removal(
                scores[pool], self._widths[ranked], floors[ranked], ratio
            )
        kept = {}
        for handle, start, in_pool in zip(self._handles, self._starts, ranked, strict=True):
            name, width = handle.info.name, handle.info.width
            segment = slice(start, start + width)
            if in_pool and handle.unit == 1 and round_to is None:
                kept[name] = tuple(np.flatnonzero(~removed[segment]).tolist())
                continue
            n_removed = int(removed[segment].sum()) if in_pool else round(ratio * width)
            kept[name] = _choose(handle, scores[segment], width - n_removed, min_keep, round_to)
        return Ticket(
            kept=kept,
            widths=self.widths,
            ratio=float(ratio),
            epoch=epoch,
            importance="bn_gamma" if importance is None else "custom",
            model_name=model_name,
            fingerprint=self.fingerprint,
            extra={
                "scope": scope,
                "min_keep": min_keep,
                "round_to": round_to,
                "input_shape": list(self.input_shape),  # lets slim() trace without an input
                "kept_dense": dict(self.kept_dense),
            },
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
    *,
    example_inputs: torch.Tensor,
    scope: str = "global",
    min_keep: int = 1,
    round_to: int | None = None,
) -> Ticket:
    """One-shot :meth:`ChannelGraph.draw` on ``model`` (traces the model once)."""
    graph = ChannelGraph(model, example_inputs)
    return graph.draw(ratio, scope=scope, min_keep=min_keep, round_to=round_to)


def _check_draw_args(ratio: float, scope: str, min_keep: int, round_to: int | None) -> None:
    if not 0.0 <= ratio < 1.0:
        raise UserError(
            f"pruning ratio {ratio} must be in [0, 1) (the fraction of channels removed)"
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

    def __init__(self, handles: list[GroupHandle], starts: list[int], bns: list[_BatchNorm]):
        self._bns = bns
        sizes = [bn.num_features for bn in bns]
        offsets = dict(zip(bns, np.cumsum([0, *sizes])[:-1].tolist(), strict=True))
        sources, targets = [], []
        for handle, start in zip(handles, starts, strict=True):
            width = handle.info.width
            for bn, bn_index, root_index in handle.bn_sources:
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


def _weight_importance(handle: GroupHandle) -> torch.Tensor:
    l1 = torch.linalg.vector_norm(handle.root.weight.detach().float().flatten(1), ord=1, dim=1)
    mean = l1.mean()
    return l1 / mean if mean > 0 else l1


def _floor(handle: GroupHandle, min_keep: int) -> int:
    """The fewest channels a group may keep: ``min_keep``, in whole slices."""
    return handle.unit * math.ceil(min_keep / handle.unit)


def _global_removal(
    values: np.ndarray, widths: np.ndarray, floors: np.ndarray, ratio: float
) -> np.ndarray:
    """Which of the concatenated channels of groups ``widths`` the global ranking removes.

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
    removed = np.zeros(values.size, dtype=bool)
    removed[order[eligible[: round(ratio * values.size)]]] = True
    return removed


def _choose(
    handle: GroupHandle, score: np.ndarray, n_keep: int, min_keep: int, round_to: int | None
) -> tuple[int, ...]:
    """The ``n_keep`` most important channels of a group, after min_keep/round_to/slices."""
    unit, width = handle.unit, handle.info.width
    size = width // unit
    keep = max(round(n_keep / unit), _floor(handle, min_keep) // unit)
    if round_to is not None:
        step = round_to // math.gcd(round_to, unit)
        keep = math.ceil(keep / step) * step
    keep = min(keep, size)
    per_slice = score[:size]  # slices share their scores (see ChannelGraph._scores)
    order = np.argsort(per_slice, kind="stable")  # the global ranking's order
    positions = np.sort(order[size - keep :])
    return tuple((positions[None, :] + size * np.arange(unit)[:, None]).reshape(-1).tolist())

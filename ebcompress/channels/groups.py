"""Channel groups as torch-pruning traces them: the one tracing step behind ticket, slim and mask.

A *channel group* is a set of channels that must be removed together: the output channels of
one convolution or linear layer plus everything torch-pruning's ``DependencyGraph`` couples to
them (the BatchNorm after it, residual additions, depthwise convolutions, concatenations, the
consumers' input channels). Residual-coupled channels therefore form ONE group.

:func:`trace_channel_groups` describes each group once, in module order, with the module
references the rest of the library needs (:class:`GroupHandle`). Groups ebcompress cannot
slim exactly are not pruned at all but listed in ``kept_dense`` with the reason.

Never pruned: the classifier head and every channel that reaches the model's output — a group
whose pruning would change an output's shape is skipped, which covers timm's
``get_classifier()``, torchvision's last ``nn.Linear``, a final convolutional classifier and
``num_classes=0`` feature extractors alike.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch_pruning import ops

from ebcompress.channels import tp_compat
from ebcompress.errors import UserError

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


class ChannelUse(NamedTuple):
    """Where a group's channels sit in one layer: channel ``root_index[j]`` of the group is
    channel ``index[j]`` of ``module``'s outputs (``out``) or inputs (not ``out``). What the
    cost model (:mod:`ebcompress.channels.cost_model`) counts a slim layer's width from."""

    module: nn.Module
    out: bool
    index: torch.Tensor
    root_index: torch.Tensor


@dataclass(frozen=True)
class GroupHandle:
    """What the library needs about a group besides its description (module references).

    ``unit`` is the number of equal slices the kept pattern must repeat over: grouped
    convolutions keep the same positions in each of their groups (as torch-pruning's pruners
    do), so a group feeding a ``groups=g`` convolution has ``unit`` a multiple of ``g``.
    ``bn_sources`` holds ``(bn, bn_index, root_index)`` per BatchNorm: channel ``bn_index[j]``
    of ``bn`` is channel ``root_index[j]`` of the group (``None``: the identity).
    ``aligned`` are the modules whose own channels are exactly the group's (for verification).
    ``uses`` place the group's channels in every conv, linear, BatchNorm and PReLU it touches.
    """

    info: ChannelGroup
    root: nn.Module
    unit: int
    bn_sources: tuple[tuple[_BatchNorm, torch.Tensor | None, torch.Tensor | None], ...]
    aligned: tuple[nn.Module, ...]
    uses: tuple[ChannelUse, ...] = ()


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


def clone_module(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with the same train/eval flags.

    The copy is taken in training mode: models that cache tensors computed in eval mode (timm's
    LeViT, EfficientFormer and TinyViT keep attention biases per device) clear the cache when
    switched to training, and autograd refuses to deep-copy those non-leaf tensors.
    """
    with modes_preserved(model):
        model.train()
        clone = copy.deepcopy(model)
    for original, copied in zip(model.modules(), clone.modules(), strict=True):
        copied.training = original.training
    return clone


def same_layers(
    original: nn.Module, clone: nn.Module, layers: Sequence[nn.Module | str]
) -> list[nn.Module]:
    """The modules of ``clone`` at the places ``layers`` (modules or names) name in ``original``.

    A module that is not a submodule of ``original``, or a name neither model has, is a
    one-line UserError (a module's repr spans many lines, so it is named by its type);
    anything but a collection of modules and names is a TypeError.
    """
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise TypeError(
            "ignored_layers must be a list of the model's modules or their names, e.g. "
            f"[model.layer1] or ['layer1'], got {type(layers).__name__}"
        )
    names = {module: name for name, module in original.named_modules()}
    clone_modules = dict(clone.named_modules())
    out = []
    for layer in layers:
        if not isinstance(layer, (str, nn.Module)):
            raise TypeError(
                f"ignored_layers holds a {type(layer).__name__}; list the model's modules "
                "(e.g. model.layer1) or their names"
            )
        name = layer if isinstance(layer, str) else names.get(layer)
        if name is None:
            raise UserError(
                f"ignored layer {type(layer).__name__} is not a submodule of the model; pass "
                "the model's own modules (e.g. model.layer1) or their names"
            )
        if name not in clone_modules:
            raise UserError(f"ignored layer {name!r} is not in the model")
        out.append(clone_modules[name])
    return out


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
    kept dense because a layer in them cannot be channel-pruned (root name -> reason).
    The graph needs ebcompress's fixes to form groups: use
    :func:`ebcompress.channels.probe.pruning_group` (or enter ``tp_compat.patched()``)."""

    graph: tp.DependencyGraph
    handles: list[GroupHandle]
    kept_dense: dict[str, str]


def trace_channel_groups(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored_layers: Sequence[nn.Module] = (),
    *,
    dense: Mapping[str, str] | None = None,
) -> ChannelTrace:
    """Trace ``model`` with torch-pruning and describe its prunable groups in module order.

    The one tracing step behind :class:`ChannelGraph`, :func:`ebcompress.channels.slim.slim` and
    :func:`ebcompress.channels.slim.masked_equivalent`, so that all three name the same groups. The
    model's train/eval flags and ``requires_grad`` flags are restored; its values untouched.

    A group that touches a layer ebcompress cannot slim exactly (LayerNorm, GroupNorm, a bare
    scaling parameter, a transposed conv, a grouped conv fed by a concatenation) is not
    pruned at all: it is listed in ``kept_dense`` with the layer and the reason, so reports
    can say which channels stay, and the rest of the network is still slimmed. Nothing is
    ever pruned in part of a group. ``dense`` (group name -> reason) keeps more groups dense:
    those :func:`ebcompress.channels.probe.find_unslimmable` found torch-pruning to get wrong.
    ``ignored_layers`` (modules of ``model``) keep their output channels; a container stands
    for all its submodules, as in torch-pruning's pruners, so ``[model.layer1]`` leaves out
    every group rooted in ``layer1`` or removing output channels of a layer in it.
    """
    dense = dense or {}
    order = {module: i for i, (_, module) in enumerate(model.named_modules())}
    names: dict[nn.Module | nn.Parameter, str] = {m: name for name, m in model.named_modules()}
    with (
        tp_compat.patched(),
        modes_preserved(model),
        _all_parameters_traced(model),
        torch.enable_grad(),
    ):
        graph, mapping = tp_compat.dependency_graph()
        graph.build_dependency(model, first_sample(example_inputs, model), verbose=False)
        names.update((param, name) for name, param in model.named_parameters())
        handles, kept_dense = [], {}
        for root, group in tp_compat.all_groups(graph, ignored_layers):
            try:
                if isinstance(group, str):
                    raise _Unsupported(group)
                handle = _describe(graph, group, names, order, mapping.unmapped)
            except _Unsupported as exc:
                kept_dense[names.get(root, str(root))] = str(exc)
                continue
            if handle is not None and handle.info.name in dense:
                kept_dense[handle.info.name] = dense[handle.info.name]
            elif handle is not None:
                handles.append(handle)
    mapping.frozen = False  # pruning changes concat sizes: remap for every group pruned
    handles.sort(key=lambda handle: order[handle.root])
    return ChannelTrace(graph, handles, kept_dense)


class _Unsupported(Exception):
    """A group holds a layer that cannot be channel-pruned exactly; the group stays dense."""


def _describe(
    graph: tp.DependencyGraph, group: tp.Group, names: dict, order: dict, unmapped: Iterable
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
        if item.dep.target in unmapped:
            raise _Unsupported(
                f"torch-pruning cannot map channel indices through {item.dep.target.name}"
            )
        _check_in_range(graph, item, names)
    aligned = []
    unit = 1
    bn_sources = []
    uses = []
    for item in group:
        module, kind = item.dep.target.module, item.dep.target.type
        if kind in _PASS_THROUGH:
            continue
        uses.append(
            ChannelUse(
                module,
                graph.is_out_channel_pruning_fn(item.dep.handler),
                torch.as_tensor(item.idxs, dtype=torch.long),
                torch.as_tensor(item.root_idxs, dtype=torch.long),
            )
        )
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
    return GroupHandle(info, root, unit, tuple(bn_sources), tuple(aligned), tuple(uses))


def _check_in_range(graph: tp.DependencyGraph, item: tp._helpers.GroupItem, names: dict) -> None:
    """torch-pruning's index mappings can point past a layer's channels (DPN's dual-path
    concatenations); such a group cannot be pruned as traced."""
    module, kind = item.dep.target.module, item.dep.target.type
    if kind in _PASS_THROUGH or not item.idxs:
        return
    if graph.is_out_channel_pruning_fn(item.dep.handler):
        channels = out_width(module)
    else:
        channels = getattr(module, "in_channels", getattr(module, "in_features", None))
    if channels is not None and max(item.idxs) >= channels:
        raise _Unsupported(
            f"torch-pruning maps channel {max(item.idxs)} into layer "
            f"{names.get(module, item.dep.target.name)!r}, which has {channels}"
        )


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

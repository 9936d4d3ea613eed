"""Dry-run slimming: find the channel groups torch-pruning gets wrong before a ticket uses them.

torch-pruning follows channels through the autograd graph and passes them through operations
it does not understand: a reshape into attention heads (the ``qkv`` projection of ViT-style
blocks), a split with fixed sizes (FasterNet's partial convolution, Res2Net's scales), an
anti-aliasing filter held in a buffer (TResNet). Pruning such a group leaves a layer with the
wrong width or a network that no longer runs. No static rule lists every such operation, so
the probe does what slimming will do: on a copy of the model it removes one channel (one per
grouped-convolution slice) from every group at once, checks the widths of every group, and
runs a forward pass. Groups that break are kept dense and the probe runs again on a fresh copy
until the copy slims cleanly. The model itself is never modified.

A forward failure names only the layer where the network stopped. The groups blamed for it
are those that hold that layer, else the group whose members come last before it; their
*analogs* (the same module path in the other blocks, e.g. ``blocks.3.attn.qkv`` for
``blocks.0.attn.qkv``) are kept dense in the same round, so a 12-block network costs one probe,
not twelve. That may keep an analog dense that would have slimmed; it never lets a broken
group through, because the final probe must pass with everything else pruned.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from ebcompress.channels import tp_compat
from ebcompress.channels.groups import (
    GroupHandle,
    clone_module,
    first_sample,
    modes_preserved,
    out_width,
    same_layers,
    trace_channel_groups,
)
from ebcompress.errors import UserError

MAX_PROBES = 16


def find_unslimmable(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored_layers: Sequence[nn.Module] = (),
) -> dict[str, str]:
    """The groups of ``model`` that slimming would break, as ``{group name: reason}``.

    Pass the result as ``dense=`` to :func:`ebcompress.channels.groups.trace_channel_groups`. Raises
    UserError when a failure cannot be pinned on any group, or after ``MAX_PROBES`` rounds.
    """
    dense: dict[str, str] = {}
    for _ in range(MAX_PROBES):
        broken = _probe(model, example_inputs, ignored_layers, dense)
        if not broken:
            return dense
        dense.update(broken)
    raise UserError(
        f"{type(model).__name__}: {len(dense)} channel groups break when slimmed and the "
        f"probe still fails after {MAX_PROBES} rounds; pass the failing layers as ignored_layers"
    )


def pruning_group(graph: tp.DependencyGraph, handle: GroupHandle, idxs: list[int]) -> tp.Group:
    """torch-pruning's group removing output channels ``idxs`` of ``handle``'s root (formed
    with ebcompress's fixes, which ``graph``, traced by ``trace_channel_groups``, needs)."""
    pruner = graph.get_pruner_of_module(handle.root)
    with tp_compat.patched():
        return graph.get_pruning_group(handle.root, pruner.prune_out_channels, idxs)


def width_error(handle: GroupHandle, kept: int) -> str | None:
    """Why ``handle``'s group is not ``kept`` wide after pruning, or None when it is."""
    for module in handle.aligned:
        if out_width(module) != kept:
            return (
                f"slimming group {handle.info.name!r} left {type(module).__name__} with "
                f"{out_width(module)} channels instead of {kept}"
            )
    return None


def forward_error(model: nn.Module, example_inputs: torch.Tensor) -> tuple[str, str] | None:
    """Run ``model`` once in eval mode: None, or (the leaf layer that failed, the error)."""
    with modes_preserved(model), last_layer_entered(model) as last, torch.no_grad():
        model.eval()
        try:
            model(first_sample(example_inputs, model))
        except Exception as exc:  # any op may reject the new shapes, with any exception type
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return last[0], text
    return None


@contextlib.contextmanager
def last_layer_entered(model: nn.Module) -> Iterator[list[str]]:
    """Forward pre-hooks that keep the name of the last leaf layer entered in ``last[0]``."""
    last = ["<input>"]

    def entering(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object) -> None:
            last[0] = name

        return hook

    hooks = [
        module.register_forward_pre_hook(entering(name))
        for name, module in model.named_modules()
        if next(module.children(), None) is None
    ]
    try:
        yield last
    finally:
        for hook in hooks:
            hook.remove()


def _probe(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored_layers: Sequence[nn.Module],
    dense: Mapping[str, str],
) -> dict[str, str]:
    """One round on a fresh copy: the groups that broke (empty when the copy slimmed cleanly)."""
    clone = clone_module(model)
    ignored = same_layers(model, clone, ignored_layers)
    with modes_preserved(clone):
        graph, handles, _ = trace_channel_groups(clone, example_inputs, ignored, dense=dense)
        kept = {}
        for handle in handles:
            idxs = _one_slice(handle)
            kept[handle.info.name] = handle.info.width - len(idxs)
            if not idxs:
                continue
            try:
                pruning_group(graph, handle, idxs).prune()
            except Exception as exc:  # a torch-pruning pruner failing on this layer, any type
                return {handle.info.name: f"torch-pruning fails to prune it ({_short(exc)})"}
    broken = {}
    for handle in handles:
        error = width_error(handle, kept[handle.info.name])
        if error is not None:
            broken[handle.info.name] = error
    if broken:
        return broken
    failure = forward_error(clone, example_inputs)
    if failure is None:
        return {}
    layer, message = failure
    culprits = _blamed(layer, handles, [name for name, _ in clone.named_modules()])
    if not culprits:
        raise UserError(
            f"the slimmed {type(model).__name__} fails at layer {layer!r} ({message}) and no "
            "channel group reaches it; pass that layer as ignored_layers"
        )
    reason = f"slimming it breaks layer {layer!r} ({message})"
    return {name: reason for name in _with_analogs(culprits, handles)}


def _one_slice(handle: GroupHandle) -> list[int]:
    """The last channel of every grouped-convolution slice; none when that would empty it."""
    size = handle.info.width // handle.unit
    if size <= 1:
        return []
    return [size * (k + 1) - 1 for k in range(handle.unit)]


def _blamed(layer: str, handles: list[GroupHandle], module_order: list[str]) -> list[str]:
    """Groups holding ``layer``; else the group whose members come last before it."""
    holding = [h.info.name for h in handles if layer in h.info.member_names]
    if holding or layer not in module_order:
        return holding
    position = {name: i for i, name in enumerate(module_order)}
    before = [
        (max(position[m] for m in h.info.member_names if position[m] <= position[layer]), i)
        for i, h in enumerate(handles)
        if any(position[m] <= position[layer] for m in h.info.member_names)
    ]
    return [handles[max(before)[1]].info.name] if before else []


def _with_analogs(names: list[str], handles: list[GroupHandle]) -> list[str]:
    """``names`` plus every group whose root differs from one of them only in block indices."""
    patterns = [re.compile(re.sub(r"\d+", r"\\d+", re.escape(name))) for name in names]
    return [h.info.name for h in handles if any(p.fullmatch(h.info.name) for p in patterns)]


def _short(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:160]

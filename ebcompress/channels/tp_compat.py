"""Where torch-pruning 1.6 fails on real architectures, and ebcompress's fixes, kept in one place.

Each fix is scoped to the graphs ebcompress builds (:func:`dependency_graph`) or to the groups
it forms (:func:`all_groups`); a user's own torch-pruning graphs behave as the library ships.

- The channel index mapping through concat/split/reshape nodes is computed node by node
  (one node torch-pruning cannot size aborted the whole trace: CSP darknets, SHViT) and once
  per trace instead of once per group (minutes on ECA-ResNets).
- Flatten mappings are bounded at :attr:`BoundedFlatten.LIMIT` indices and forming one group
  at ``2 x nodes + 256`` steps: through attention and token reshapes torch-pruning's index
  lists multiply or cycle and a group takes minutes or never closes (CoAtNet, EfficientViT).

The groups hit by any of these are kept dense by :mod:`ebcompress.channels.groups`, with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch_pruning as tp
from torch import nn
from torch_pruning import ops
from torch_pruning.dependency import index_mapping as tp_index_mapping


def all_groups(
    graph: tp.DependencyGraph, ignored_layers: Sequence[nn.Module]
) -> Iterator[tuple[nn.Module, tp.Group | str]]:
    """torch-pruning's ``get_all_groups`` (conv/linear roots), one root at a time: a root whose
    group torch-pruning cannot form yields the reason (a str) instead of ending the trace.

    ``ignored_layers`` keep their output channels: no group rooted in one, or removing output
    channels of one, is yielded. A container stands for all its submodules, as in
    torch-pruning's pruners (``get_all_groups`` itself only compares the modules given, so an
    ignored ``model.layer1`` would match none of its convolutions and be pruned anyway).
    """
    ignored = {sub for layer in ignored_layers for sub in layer.modules()}
    ignored |= set(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if module in ignored or module in visited:
            continue
        if not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        channels = list(range(pruner.get_out_channels(module)))
        try:
            with _grouping_budget(steps=2 * len(graph.module2node) + 256, indices=1 << 18):
                group = graph.get_pruning_group(module, pruner.prune_out_channels, channels)
        except _MappingExplodes as exc:
            yield module, str(exc)
            continue
        except (ArithmeticError, TypeError, ValueError, IndexError) as exc:
            yield module, f"torch-pruning cannot group it ({type(exc).__name__})"
            continue
        outs = [item.dep.target.module for item in group if _is_out(graph, item)]
        visited.update(outs)
        if not any(layer in ignored for layer in outs):
            yield module, group


def _is_out(graph: tp.DependencyGraph, item: tp._helpers.GroupItem) -> bool:
    return graph.is_out_channel_pruning_fn(item.dep.handler)


class _MappingExplodes(Exception):
    """A group torch-pruning would take minutes (or forever) to form: too many indices
    (:class:`BoundedFlatten`) or too many steps (:func:`_grouping_budget`)."""


_BUDGET: list[dict[str, int]] = []  # what the group being formed may still spend
_LIBRARY_ADD_DEP = tp.dependency.group.Group.add_dep


def _spend(kind: str, amount: int) -> None:
    if _BUDGET:
        _BUDGET[-1][kind] -= amount
        if _BUDGET[-1][kind] < 0:
            raise _MappingExplodes(
                f"torch-pruning's grouping does not settle (its channel index mappings through "
                f"reshapes ran past the {kind} budget)"
            )


def _counted_add_dep(self: tp.Group, dep: tp.Dependency, idxs: list) -> None:
    _spend("steps", 1)
    _LIBRARY_ADD_DEP(self, dep, idxs)


tp.dependency.group.Group.add_dep = _counted_add_dep


@contextlib.contextmanager
def _grouping_budget(*, steps: int, indices: int) -> Iterator[None]:
    """Bound the dependencies one group may collect and the indices its flatten mappings may
    produce. torch-pruning adds each (layer, pruning function) once per distinct index set;
    through some attention reshapes its mappings produce new index sets forever (EfficientViT,
    iFormer) or keep re-expanding large ones (EfficientViM), so the group never closes."""
    _BUDGET.append({"steps": steps, "indices": indices})
    try:
        yield
    finally:
        _BUDGET.pop()


class BoundedFlatten(tp_index_mapping._FlattenIndexMapping):
    """torch-pruning's flatten index mapping, refusing to expand past ``LIMIT`` indices.

    torch-pruning reads some attention and token reshapes (CoAtNet, ECA's channel conv) as
    flattening each channel into ``stride`` features; chained, the index lists multiply until
    forming one group takes minutes and gigabytes. No CNN's real flatten comes near the bound
    (VGG's 512 x 7 x 7 classifier input is 25,088 indices).
    """

    LIMIT = 1 << 16

    def __call__(self, idxs: list) -> list:
        if max(len(idxs), len(idxs) * self._stride * (not self.reverse)) > self.LIMIT:
            raise _MappingExplodes(
                f"torch-pruning's channel index mapping through a reshape grows past "
                f"{self.LIMIT:,} indices (a token or attention reshape read as a flatten)"
            )
        mapped = super().__call__(idxs)
        _spend("indices", len(idxs) + len(mapped))  # the work of this call
        return mapped


def dependency_graph() -> tuple[tp.DependencyGraph, IndexMapping]:
    """An empty torch-pruning graph that uses :class:`IndexMapping`, and that mapping."""
    graph = tp.DependencyGraph()
    mapping = graph._ebcompress_index_mapping = IndexMapping()
    return graph, mapping


class IndexMapping:
    """ebcompress's replacement for torch-pruning's ``update_index_mapping`` on its own graphs.

    torch-pruning 1.6 maps channel indices through every concat/split/reshape of the graph in
    one loop, and one node it cannot size (a concat of a channel count it cannot infer, as in
    timm's CSP darknets; a reshape to zero channels, as in SHViT) raises out of the whole
    build. Here each node is mapped on its own and the nodes that fail are collected in
    ``unmapped``; every group passing through one is kept dense instead of failing the model.

    torch-pruning also redoes the whole mapping for every group it forms (O(groups x nodes),
    minutes for ECA-ResNets); while ``frozen`` (during a trace, when nothing is pruned and the
    mapping cannot change) it is computed once.
    """

    def __init__(self) -> None:
        self.unmapped: set[tp.Node] = set()
        self.frozen = True
        self._done = False

    def update(self, graph: tp.DependencyGraph) -> None:
        if self.frozen and self._done:
            return
        for node in graph.module2node.values():
            update = _NODE_UPDATES.get(node.type)
            try:
                if update is not None:
                    update(graph, node)
            except (ArithmeticError, TypeError, ValueError, IndexError):
                self.unmapped.add(node)
            for dep in node.dependencies:
                dep.index_mapping = [_bounded(m) for m in dep.index_mapping]
        self._done = True


def _bounded(mapping: object) -> object:
    if type(mapping) is not tp_index_mapping._FlattenIndexMapping:
        return mapping
    return BoundedFlatten(stride=mapping._stride, reverse=mapping.reverse)


_NODE_UPDATES = {
    ops.OPTYPE.CONCAT: tp_index_mapping.update_concat_index_mapping,
    ops.OPTYPE.SPLIT: tp_index_mapping.update_split_index_mapping,
    ops.OPTYPE.RESHAPE: tp_index_mapping.update_reshape_index_mapping,
    ops.OPTYPE.UNBIND: tp_index_mapping.update_unbind_index_mapping,
    ops.OPTYPE.EXPAND: tp_index_mapping.update_expand_index_mapping,
    ops.OPTYPE.SLICE: tp_index_mapping.update_slice_index_mapping,
}
_LIBRARY_UPDATE = tp_index_mapping.update_index_mapping


def _update_index_mapping(graph: tp.DependencyGraph) -> None:
    """Installed in torch-pruning: ebcompress's graphs use :class:`IndexMapping`, others the
    library's own function, unchanged."""
    mapping = getattr(graph, "_ebcompress_index_mapping", None)
    if mapping is None:
        _LIBRARY_UPDATE(graph)
    else:
        mapping.update(graph)


tp_index_mapping.update_index_mapping = _update_index_mapping

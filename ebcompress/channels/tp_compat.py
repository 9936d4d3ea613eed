"""Where torch-pruning 1.6 fails on real architectures, and ebcompress's fixes, kept in one place.

The fixes replace two torch-pruning functions, ``Group.add_dep`` and
``index_mapping.update_index_mapping``, only inside :func:`patched`: ebcompress enters it around
every call into torch-pruning (:mod:`ebcompress.channels.groups` traces, :mod:`~.probe` and
:mod:`~.slim` prune), and restores the library's functions on the way out. Even inside, the
replacements act only on the graphs ebcompress builds (:func:`dependency_graph`) and the groups
it forms (:func:`all_groups`) in the thread that entered: a user's own torch-pruning graphs
behave as the library ships, before, during and after.

- The channel index mapping through concat/split/reshape nodes is computed node by node
  (one node torch-pruning cannot size aborted the whole trace: CSP darknets, SHViT) and once
  per trace instead of once per group (minutes on ECA-ResNets).
- Flatten mappings are bounded at :attr:`BoundedFlatten.LIMIT` indices and forming one group
  at ``2 x nodes + 256`` steps: through attention and token reshapes torch-pruning's index
  lists multiply or cycle and a group takes minutes or never closes (CoAtNet, EfficientViT).

The groups hit by any of these are kept dense by :mod:`ebcompress.channels.groups`, with the
reason. The patches reach into torch-pruning's internals, so :func:`patched` first checks that
the installed release is one they were written for (:data:`SUPPORTED`).
"""

from __future__ import annotations

import contextlib
import importlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from ebcompress.errors import UserError

if TYPE_CHECKING:
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

#: The torch-pruning releases whose internals the patches know (pyproject pins the same range).
SUPPORTED = ">=1.6,<1.7"
_SUPPORTED_MINOR = (1, 6)

_LOCK = threading.RLock()  # held by the thread inside patched(), for as long as it is inside
_depth = 0  # how deep that thread is nested in patched()
_restore: list[Callable[[], None]] = []
_local = threading.local()  # .budgets: what the groups this thread is forming may still spend


def installed_version() -> str:
    """The imported torch-pruning's version: its ``__version__``, else the distribution's
    (1.5 releases define no ``__version__``)."""
    version = getattr(tp, "__version__", None)
    if version is not None:
        return str(version)
    try:
        return metadata.version("torch-pruning")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_version() -> None:
    """UserError unless the installed torch-pruning is in :data:`SUPPORTED`."""
    version = installed_version()
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) != _SUPPORTED_MINOR:
        raise UserError(
            f"torch-pruning {version} is installed, but ebcompress supports torch-pruning "
            f"{SUPPORTED} only; run: pip install 'torch-pruning{SUPPORTED}'"
        )


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """Install ebcompress's fixes into torch-pruning for the duration; re-entrant.

    The outermost entry checks the version (:func:`check_version`) and installs, its exit puts
    the library's own functions back. The lock keeps a second thread's ebcompress trace waiting
    until the first is done, so one thread's exit never uninstalls under another.
    """
    global _depth
    with _LOCK:
        if _depth == 0:
            check_version()
            try:
                _install()
            except BaseException:
                _uninstall()  # a half-done install must not stay behind
                raise
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                _uninstall()


def _uninstall() -> None:
    while _restore:
        _restore.pop()()


def _install() -> None:
    index_mapping = _index_mapping_module()
    group_class = importlib.import_module("torch_pruning.dependency.group").Group
    library_add_dep = group_class.add_dep
    library_update = index_mapping.update_index_mapping

    def counted_add_dep(self: tp.Group, dep: tp.Dependency, idxs: list) -> None:
        _spend("steps", 1)
        library_add_dep(self, dep, idxs)

    def update_index_mapping(graph: tp.DependencyGraph) -> None:
        # ebcompress's graphs use IndexMapping; every other graph the library's own function
        mapping = getattr(graph, "_ebcompress_index_mapping", None)
        if mapping is None:
            library_update(graph)
        else:
            mapping.update(graph)

    group_class.add_dep = counted_add_dep
    _restore.append(lambda: setattr(group_class, "add_dep", library_add_dep))
    index_mapping.update_index_mapping = update_index_mapping
    _restore.append(lambda: setattr(index_mapping, "update_index_mapping", library_update))


def _index_mapping_module() -> ModuleType:
    # imported on use, after check_version: the module does not exist before 1.6
    return importlib.import_module("torch_pruning.dependency.index_mapping")


def all_groups(
    graph: tp.DependencyGraph, ignored_layers: Sequence[nn.Module]
) -> Iterator[tuple[nn.Module, tp.Group | str]]:
    """torch-pruning's ``get_all_groups`` (conv/linear roots), one root at a time: a root whose
    group torch-pruning cannot form yields the reason (a str) instead of ending the trace.
    Iterate it inside :func:`patched`.

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


def _spend(kind: str, amount: int) -> None:
    budgets = getattr(_local, "budgets", None)
    if budgets:
        budgets[-1][kind] -= amount
        if budgets[-1][kind] < 0:
            raise _MappingExplodes(
                f"torch-pruning's grouping does not settle (its channel index mappings through "
                f"reshapes ran past the {kind} budget)"
            )


@contextlib.contextmanager
def _grouping_budget(*, steps: int, indices: int) -> Iterator[None]:
    """Bound the dependencies one group may collect and the indices its flatten mappings may
    produce. torch-pruning adds each (layer, pruning function) once per distinct index set;
    through some attention reshapes its mappings produce new index sets forever (EfficientViT,
    iFormer) or keep re-expanding large ones (EfficientViM), so the group never closes.
    Per thread: another thread's torch-pruning calls spend nothing from it."""
    if not hasattr(_local, "budgets"):
        _local.budgets = []
    _local.budgets.append({"steps": steps, "indices": indices})
    try:
        yield
    finally:
        _local.budgets.pop()


class BoundedFlatten:
    """torch-pruning's flatten index mapping ``flatten``, refusing to expand past ``LIMIT``
    indices (it wraps the library's mapping rather than subclassing it, so that importing
    this module does not depend on the library's internals).

    torch-pruning reads some attention and token reshapes (CoAtNet, ECA's channel conv) as
    flattening each channel into ``stride`` features; chained, the index lists multiply until
    forming one group takes minutes and gigabytes. No CNN's real flatten comes near the bound
    (VGG's 512 x 7 x 7 classifier input is 25,088 indices).
    """

    LIMIT = 1 << 16

    def __init__(self, flatten: _FlattenIndexMapping) -> None:
        self.flatten = flatten

    def __call__(self, idxs: list) -> list:
        growth = self.flatten._stride * (not self.flatten.reverse)
        if max(len(idxs), len(idxs) * growth) > self.LIMIT:
            raise _MappingExplodes(
                f"torch-pruning's channel index mapping through a reshape grows past "
                f"{self.LIMIT:,} indices (a token or attention reshape read as a flatten)"
            )
        mapped = self.flatten(idxs)
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
        index_mapping = _index_mapping_module()
        for node in graph.module2node.values():
            update = _NODE_UPDATES.get(node.type)
            try:
                if update is not None:
                    getattr(index_mapping, update)(graph, node)
            except (ArithmeticError, TypeError, ValueError, IndexError):
                self.unmapped.add(node)
            for dep in node.dependencies:
                dep.index_mapping = [_bounded(m, index_mapping) for m in dep.index_mapping]
        self._done = True


def _bounded(mapping: object, index_mapping: ModuleType) -> object:
    if type(mapping) is not index_mapping._FlattenIndexMapping:
        return mapping  # not a flatten, or already bounded
    return BoundedFlatten(mapping)


# torch-pruning's per-node mapping functions, by the node type they handle
_NODE_UPDATES = {
    ops.OPTYPE.CONCAT: "update_concat_index_mapping",
    ops.OPTYPE.SPLIT: "update_split_index_mapping",
    ops.OPTYPE.RESHAPE: "update_reshape_index_mapping",
    ops.OPTYPE.UNBIND: "update_unbind_index_mapping",
    ops.OPTYPE.EXPAND: "update_expand_index_mapping",
    ops.OPTYPE.SLICE: "update_slice_index_mapping",
}

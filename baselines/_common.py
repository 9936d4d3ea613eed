"""What the baselines share: the dense search phase, sample minibatches, and channel scores.

Every baseline trains (or probes) the recipe's dense network through the same engine and
ledger as Early-Bird, so their costs are measured the same way. Channel-granularity variants
turn per-weight scores (weight magnitude, SNIP sensitivity) into per-channel scores over the
layers whose *output* channels form each prunable group (:func:`group_layers`), normalise them
within each group, and let :meth:`ebcompress.channels.graph.ChannelGraph.draw` rank them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.data import DataLoader

from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.groups import trace_channel_groups
from ebcompress.engine.distributed import unwrap
from ebcompress.methods.base import RunContext


@dataclass(frozen=True)
class GroupLayers:
    """The conv/linear layers of one channel group, by module name.

    ``producers`` output exactly the group's channels (its root first, then layers coupled to
    it, e.g. by a residual addition or a depthwise conv); ``consumers`` read them as input.
    """

    producers: tuple[str, ...]
    consumers: tuple[str, ...]


def group_layers(model: nn.Module, example_inputs: Tensor) -> dict[str, GroupLayers]:
    """Producers and consumers of every prunable group, keyed like :class:`ChannelGraph`."""
    names = {module: name for name, module in model.named_modules()}
    handles = trace_channel_groups(model, example_inputs).handles
    layers = {}
    for handle in handles:
        members = [model.get_submodule(name) for name in handle.info.member_names]
        weighted = [m for m in members if isinstance(m, _ConvNd | nn.Linear)]
        producers = [m for m in weighted if any(m is a for a in handle.aligned)]
        producers.sort(key=lambda m: m is not handle.root)  # stable: root first
        consumers = [m for m in weighted if not any(m is p for p in producers)]
        layers[handle.info.name] = GroupLayers(
            producers=tuple(names[m] for m in producers),
            consumers=tuple(names[m] for m in consumers),
        )
    return layers


def channel_scores(
    layers: Mapping[str, GroupLayers], weight_scores: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Per group, per channel: ``weight_scores`` (per-weight, keyed ``"<layer>.weight"``) summed
    over each output channel's weights in all of the group's producers, then divided by the
    group's mean (a group whose scores are all zero stays zero).

    Why the division: a filter's summed score grows with its fan-in (a narrow VGG-11's first
    conv has 9 weights per filter on grey images, its last ones 1,152) and, for SNIP, with the
    layer's depth, so raw sums are not comparable across layers; ranked globally they cut whole
    early (LT) or late (SNIP) layers to ``min_keep`` channels. Divided by its group's mean, a
    channel's score is its importance *relative to its layer*, which is what torch-pruning
    ranks in global pruning: its ``GroupMagnitudeImportance`` (p=1 is filter L1, Li et al.,
    ICLR 2017) and ``GroupTaylorImportance`` (``|w * dw|``, SNIP's connection sensitivity
    summed per channel) both default to ``normalizer="mean"`` (torch_pruning/pruner/
    importance.py), and its ``BasePruner(global_pruning=True)`` ranks those normalised scores
    over all groups together. Ranking within one group (``scope="uniform"``, ThiNet's
    fallback) is unchanged by the division.
    """
    scores = {}
    for group, members in layers.items():
        total = None
        for layer in members.producers:
            per_channel = weight_scores[f"{layer}.weight"].detach().float().flatten(1).sum(dim=1)
            total = per_channel if total is None else total + per_channel
        mean = total.mean()
        scores[group] = (total / mean if mean > 0 else total).cpu()
    return scores


def channel_graph(run: RunContext) -> ChannelGraph:
    """The dense model's prunable channel groups (traced once, before it trains); with a
    budget (``prune.target_macs``) its shares are of ``count_flops``' dense count."""
    graph = ChannelGraph(unwrap(run.model), run.example_inputs)
    if run.recipe.prune.draw_options().budget is not None:
        graph.calibrate_cost(run.dense_macs)
    return graph


class AfterBackward:
    """Adapt a no-argument gradient hook (e.g. ``BNL1Regularizer``) to the engine's callbacks."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hook = hook

    def after_backward(self, model: nn.Module) -> None:
        self.hook()


def sample_batches(run: RunContext, images: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The first ``images`` training samples in a seeded shuffle, in batches of the recipe's
    batch size, on ``run.device``. The same recipe always yields the same samples."""
    recipe = run.recipe
    loader = DataLoader(
        run.data.train,
        batch_size=recipe.train.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(recipe.seed),
        num_workers=recipe.data.num_workers,
    )
    left = images
    for inputs, labels in loader:
        if left <= 0:
            return
        yield inputs[:left].to(run.device), labels[:left].to(run.device)
        left -= len(inputs)


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of ``model``'s state dict (survives further training)."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}

"""ThiNet (Luo et al., "ThiNet: A Filter Level Pruning Method for Deep Neural Network
Compression", ICCV 2017) under the pipeline's Method protocol.

After the full dense schedule, ThiNet prunes the channels of layer ``i`` by what the *next*
layer needs: the output of consumer layer ``i+1`` at a sampled (image, position, filter) is a
sum over input channels, ``y = sum_c x_c`` with ``x_c`` the channel's contribution
(its activation patch times the filter's weights; bias aside). Sec. 3.2, Algorithm 1: greedily
remove, one at a time, the channel that keeps ``sum_samples (sum_{c removed} x_c)^2`` smallest.
Sec. 3.3: rescale the kept channels by ``w = argmin ||y - X_kept w||^2`` (least squares),
folded into the consumer's input-channel weights.

Here, each prunable group whose channels feed exactly one convolution (or a linear layer on
globally pooled features) is pruned this way, in forward order, on ``prune.thinet.samples``
training images with ``positions_per_sample`` random (position, filter) pairs each. Groups are
processed sequentially: a group's contributions are sampled after the earlier groups were
pruned (consumer columns zeroed) and rescaled, so the errors do not compound unseen. ThiNet
prunes layer by layer at one ratio, so every group loses ``round(ratio * width)`` channels
(``scope`` is always uniform; ``min_keep`` / ``round_to`` apply). The paper fine-tunes briefly
after each layer; this implementation fine-tunes once at the end, like network slimming.
``prune.dense_epochs: 0`` with ``model.init`` prunes the loaded network without training it
first, which is how the paper applies ThiNet (to ImageNet-trained VGG-16 and ResNet-50).

A group that ThiNet's reconstruction cannot handle (several producers coupled by a residual
addition, several consumers, a grouped or string-padded consumer, a flatten into a linear
layer) falls back to the L1 norm of its filters at the same ratio; the search's ``extra``
lists which groups used which criterion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebcompress.baselines._common import (
    GroupLayers,
    channel_graph,
    channel_scores,
    clone_state,
    group_layers,
    sample_batches,
)
from ebcompress.baselines._masks import prunable_weights
from ebcompress.baselines.network_slimming import finetune_plan
from ebcompress.baselines.thinet_options import ThiNetOptions
from ebcompress.channels.groups import modes_preserved
from ebcompress.engine.distributed import unwrap
from ebcompress.methods.base import (
    RetrainPlan,
    RunContext,
    SearchOutcome,
    train_dense,
)


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the consumer's input is seen."""


def reconstructable(layer: nn.Module, width: int) -> bool:
    """Whether ThiNet's contributions are defined for ``layer`` reading ``width`` channels."""
    if isinstance(layer, nn.Conv2d):
        return (
            layer.groups == 1
            and layer.in_channels == width
            and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)
        )
    return isinstance(layer, nn.Linear) and layer.in_features == width


def contributions(
    inputs: Tensor, layer: nn.Module, positions: int, generator: torch.Generator
) -> Tensor:
    """ThiNet's per-channel contributions ``x_c`` to ``positions`` random outputs per sample.

    ``inputs`` is what ``layer`` (a Conv2d or Linear, see :func:`reconstructable`) reads. For
    each sample, ``positions`` (output position, filter) pairs are drawn; the result has one
    row per pair and one column per input channel, and a row sums to that output minus its
    bias. Shape ``(samples * positions, channels)``, float32.
    """
    weight = layer.weight.detach().float()
    x = inputs.detach().float()
    if isinstance(layer, nn.Linear):
        rows = x.reshape(-1, x.shape[-1])
        filters = torch.randint(weight.shape[0], (len(rows), positions), generator=generator)
        return (rows[:, None, :] * weight[filters.to(x.device)]).reshape(-1, rows.shape[1])

    batch, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
    )
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    shape = (batch, positions)
    oh = torch.randint(out_h, shape, generator=generator).to(x.device)
    ow = torch.randint(out_w, shape, generator=generator).to(x.device)
    filters = torch.randint(weight.shape[0], shape, generator=generator).to(x.device)
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = oh[..., None] * sh + torch.arange(kh, device=x.device) * dh  # (B, P, kh)
    cols = ow[..., None] * sw + torch.arange(kw, device=x.device) * dw  # (B, P, kw)
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    # Advanced indices around a slice: the channel axis moves last -> (B, P, kh, kw, C).
    patches = padded[index, :, rows[..., :, None], cols[..., None, :]]
    return torch.einsum("bpijc,bpcij->bpc", patches, weight[filters]).reshape(-1, channels)


def greedy_channel_selection(contrib: Tensor, num_remove: int) -> list[int]:
    """ThiNet's Algorithm 1: the channels to remove, in removal order.

    Each step removes the channel ``c`` minimising ``sum_i (r_i + x_ic)^2`` with ``r`` the summed
    contributions of the channels removed so far, i.e. ``2 X^T r + ||x_c||^2``; ties go to the
    lower index.
    """
    x = contrib.detach().double().cpu()
    if not 0 <= num_remove < x.shape[1]:
        raise ValueError(f"cannot remove {num_remove} of {x.shape[1]} channels")
    squared = (x * x).sum(dim=0)
    residual = torch.zeros(x.shape[0], dtype=x.dtype)
    available = torch.ones(x.shape[1], dtype=torch.bool)
    removed = []
    for _ in range(num_remove):
        cost = (2.0 * (x.T @ residual) + squared).masked_fill(~available, float("inf"))
        channel = int(torch.argmin(cost))
        removed.append(channel)
        available[channel] = False
        residual += x[:, channel]
    return removed


def least_squares_scale(contrib: Tensor, kept: Sequence[int]) -> Tensor:
    """ThiNet Sec. 3.3: per kept channel, the scale ``w = argmin ||y - X_kept w||^2`` with ``y``
    the full output (all channels). Falls back to ones if the solve is not finite."""
    x = contrib.detach().double().cpu()
    target = x.sum(dim=1, keepdim=True)
    solution = torch.linalg.lstsq(x[:, list(kept)], target).solution.reshape(-1)
    if not bool(torch.isfinite(solution).all()):
        return torch.ones(len(kept), dtype=torch.float64)
    return solution


def reconstruction_error(
    contrib: Tensor, kept: Sequence[int], scale: Tensor | None = None
) -> float:
    """Mean squared error between the full outputs and those of the kept channels (scaled)."""
    x = contrib.detach().double().cpu()
    approx = x[:, list(kept)]
    if scale is not None:
        approx = approx * scale.double().cpu()
    return float((x.sum(dim=1) - approx.sum(dim=1)).pow(2).mean())


@torch.no_grad()
def sample_contributions(
    model: nn.Module,
    layer: nn.Module,
    batches: Sequence[Tensor],
    positions: int,
    generator: torch.Generator,
) -> Tensor:
    """:func:`contributions` of ``layer``'s input over all ``batches``, stopping each forward
    pass as soon as ``layer`` is reached."""
    found: list[Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        found.append(contributions(args[0], module, positions, generator))
        raise _Captured

    handle = layer.register_forward_pre_hook(capture)
    try:
        for images in batches:
            try:
                model(images)
            except _Captured:
                continue
            raise RuntimeError("the consumer layer was never called in the forward pass")
    finally:
        handle.remove()
    return torch.cat(found)


@torch.no_grad()
def fold_scale(
    layer: nn.Module, kept: Sequence[int], removed: Sequence[int], scale: Tensor
) -> None:
    """Multiply ``layer``'s input-channel weights of ``kept`` by ``scale``; zero ``removed``."""
    weight = layer.weight
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    kept_index = torch.as_tensor(list(kept), device=weight.device)
    factors = scale.to(weight.device, weight.dtype).view(shape)
    weight[:, kept_index] = weight[:, kept_index] * factors
    weight[:, torch.as_tensor(list(removed), dtype=torch.long, device=weight.device)] = 0


def _eligible(layers: GroupLayers, widths: dict[str, int], name: str, model: nn.Module) -> bool:
    if len(layers.producers) != 1 or len(layers.consumers) != 1:
        return False
    return reconstructable(model.get_submodule(layers.consumers[0]), widths[name])


def _forward_order(model: nn.Module, layers: Sequence[nn.Module], example: Tensor) -> list[int]:
    """Indices of ``layers`` in the order a forward pass first calls them."""
    order: list[int] = []

    def recorder(index: int):
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if index not in order:
                order.append(index)

        return record

    handles = [layer.register_forward_pre_hook(recorder(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order + [i for i in range(len(layers)) if i not in order]


class ThiNet:
    """Dense training, greedy next-layer reconstruction pruning, fine-tune (Luo et al., 2017)."""

    def search(self, run: RunContext) -> SearchOutcome:
        recipe, prune = run.recipe, run.recipe.prune
        options: ThiNetOptions = prune.thinet
        model = unwrap(run.model)
        graph = channel_graph(run)
        trainer = train_dense(run)
        # the trained dense net, before the reconstruction below rescales it in place
        teacher = clone_state(model) if recipe.retrain.dense_teacher else None
        layers = group_layers(model, run.example_inputs)
        magnitudes = {name: w.detach().abs() for name, w in prunable_weights(model).items()}
        # The uniform L1 ticket fixes each group's kept count and is the fallback's choice.
        probe = graph.draw(
            prune.ratio,
            replace(prune.draw_options(), scope="uniform"),
            epoch=trainer.last_epoch,
            importance=channel_scores(layers, magnitudes),
            model_name=recipe.model.name,
        )
        widths = graph.widths
        eligible = [name for name in widths if _eligible(layers[name], widths, name, model)]
        consumers = [model.get_submodule(layers[name].consumers[0]) for name in eligible]
        images = [x for x, _ in sample_batches(run, options.samples)]
        generator = torch.Generator().manual_seed(recipe.seed)
        kept = dict(probe.kept)
        errors: dict[str, dict[str, float]] = {}
        with modes_preserved(model):
            model.eval()
            for i in _forward_order(model, consumers, run.example_inputs):
                name, consumer = eligible[i], consumers[i]
                contrib = sample_contributions(
                    model, consumer, images, options.positions_per_sample, generator
                )
                removed = greedy_channel_selection(contrib, widths[name] - len(probe.kept[name]))
                keep = sorted(set(range(widths[name])) - set(removed))
                scale = least_squares_scale(contrib, keep)
                fold_scale(consumer, keep, removed, scale)
                kept[name] = tuple(keep)
                energy = float(contrib.double().sum(dim=1).pow(2).mean()) or 1.0
                errors[name] = {
                    "selected": reconstruction_error(contrib, keep) / energy,
                    "rescaled": reconstruction_error(contrib, keep, scale) / energy,
                }
        ticket = replace(probe, kept=kept, importance="thinet")
        extra = {
            "thinet_groups": eligible,
            "l1_fallback_groups": [name for name in widths if name not in errors],
            "relative_reconstruction_error": errors,
        }
        # the consumers' rescaled weights: the slim network is cut from these
        start = clone_state(model)
        return SearchOutcome(
            ticket, trainer.last_epoch, extra=extra, start_state=start, teacher_state=teacher
        )

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan:
        return finetune_plan(run.recipe, outcome.start_state)

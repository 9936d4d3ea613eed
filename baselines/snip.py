"""SNIP (Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity",
ICLR 2019) under the pipeline's Method protocol.

SNIP prunes *before* training: at initialisation, the sensitivity of the loss to removing each
connection is ``|dL/dc_j| = |g_j * w_j|`` (the gradient with respect to a multiplicative gate
``c_j = 1`` on weight ``w_j``; paper eq. 5), normalised to sum to one over the prunable
weights. The gradient is that of the mean loss over ``prune.snip.batches`` minibatches of the
recipe's batch size (the paper uses one batch; more batches only average out its noise). The
network then trains the full schedule from the same initial weights. There is no dense
training, so the search records no training cost (a few forward/backward passes, not counted).

- ``prune.snip.granularity: channel`` (default): a channel's sensitivity is the sum over its
  filters' connections (root conv plus convs coupled by residual additions) divided by its
  group's mean, as torch-pruning's ``GroupTaylorImportance`` (``|w * dw|`` per channel) does
  by default, then ranked as ``prune.scope`` says (globally by default); the network is
  slimmed physically. Unnormalised sums are not comparable across layers and, ranked
  globally, pruned the last convolutions to one channel
  (:func:`~ebcompress.baselines._common.channel_scores`).
- ``unstructured`` (the paper's original): the fraction ``ratio`` of least sensitive weights
  over every conv and linear layer except the classifier is masked; the network stays dense
  (training cost: 1 x the dense schedule).

BatchNorm runs in training mode for the probe, as in the first training step; its running
statistics are restored afterwards, so training starts from the untouched initialisation.
``retrain.mode`` and ``retrain.epochs`` do not apply: SNIP trains the dense schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebcompress.baselines._common import (
    channel_graph,
    channel_scores,
    clone_state,
    group_layers,
    sample_batches,
)
from ebcompress.baselines._masks import (
    WeightMaskCallback,
    full_ticket,
    global_magnitude_masks,
    masked_state,
    prunable_weights,
    weight_sparsity,
)
from ebcompress.baselines.snip_options import SnipOptions
from ebcompress.channels.groups import modes_preserved
from ebcompress.engine.distributed import unwrap
from ebcompress.methods.base import RetrainPlan, RunContext, SearchOutcome


def connection_sensitivity(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], weights: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """SNIP's normalised connection sensitivity ``|g * w| / sum |g * w|`` for each of
    ``weights`` (name -> parameter of ``model``), ``g`` the gradient of the mean cross-entropy
    over all samples of ``batches``. The model's state (BN statistics included), modes and
    gradients are left as they were."""
    state = clone_state(model)
    saved_grads = {name: param.grad for name, param in model.named_parameters()}
    samples = 0
    with modes_preserved(model), torch.enable_grad():
        model.train()
        model.zero_grad(set_to_none=True)
        for images, labels in batches:
            F.cross_entropy(model(images), labels, reduction="sum").backward()
            samples += len(labels)
        if samples == 0:
            raise ValueError("connection_sensitivity: no samples")
        scores = {
            name: torch.zeros_like(w) if w.grad is None else (w.grad * w).detach().abs()
            for name, w in weights.items()
        }
    total = sum(float(score.double().sum()) for score in scores.values())
    # The 1/samples of the mean loss cancels in the normalisation.
    scores = {name: score / total if total > 0 else score for name, score in scores.items()}
    model.load_state_dict(state)
    for name, param in model.named_parameters():
        param.grad = saved_grads[name]
    return scores


class Snip:
    """Prune at initialisation by connection sensitivity, then train (Lee et al., 2019)."""

    def search(self, run: RunContext) -> SearchOutcome:
        recipe, prune = run.recipe, run.recipe.prune
        options: SnipOptions = prune.snip
        model = unwrap(run.model).to(run.device)
        graph = channel_graph(run)
        initial = clone_state(model)
        batches = sample_batches(run, options.batches * recipe.train.batch_size)
        sensitivity = connection_sensitivity(model, batches, prunable_weights(model))
        extra: dict[str, Any] = {"granularity": options.granularity, "batches": options.batches}
        if options.granularity == "channel":
            scores = channel_scores(group_layers(model, run.example_inputs), sensitivity)
            ticket = graph.draw(
                prune.ratio,
                prune.draw_options(),
                epoch=0,
                importance=scores,
                model_name=recipe.model.name,
            )
            ticket = replace(ticket, importance="snip")
            return SearchOutcome(ticket, 0, extra=extra, start_state=initial)

        masks = global_magnitude_masks(sensitivity, prune.ratio)
        sparsity = weight_sparsity(masks)
        ticket = full_ticket(
            graph,
            prune.ratio,
            importance="snip",
            epoch=0,
            model_name=recipe.model.name,
            weight_sparsity=sparsity,
        )
        extra["weight_sparsity"] = sparsity
        start = masked_state(initial, masks)
        return SearchOutcome(ticket, 0, weight_masks=masks, extra=extra, start_state=start)

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan:
        callbacks = [WeightMaskCallback(outcome.weight_masks)] if outcome.weight_masks else []
        return RetrainPlan(
            start_epoch=0,
            end_epoch=run.recipe.train.epochs,
            start_state=outcome.start_state,
            callbacks=callbacks,
        )

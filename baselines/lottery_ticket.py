"""One-shot lottery ticket (Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019)
under the pipeline's Method protocol.

Search trains the dense network for the whole schedule without a sparsity penalty, then
prunes by weight magnitude at ``prune.ratio`` and rewinds the surviving weights:

- ``prune.lt.granularity: channel`` (default): a channel's score is the L1 norm of its
  filters (the group's root conv plus any conv coupled to it by a residual addition; Li et
  al., "Pruning Filters for Efficient ConvNets", ICLR 2017) divided by its group's mean, as
  torch-pruning normalises group importance (:func:`~ebcompress.baselines._common.channel_scores`
  says why: raw L1 grows with fan-in, and ranked globally it emptied whole early layers), then
  ranked as ``prune.scope`` says; the network is slimmed physically.
- ``unstructured`` (the paper's original): the fraction ``ratio`` of the weights with the
  smallest magnitude, ranked globally over every conv and linear layer except the classifier,
  is masked; the network stays dense-shaped, so its training FLOPs are honestly dense
  (search + retrain = 2 x the dense schedule), as the Early-Bird paper's Table 2 counts them.

Rewinding (``prune.lt.rewind_epoch``): 0 (default) resets the survivors to their values at
initialisation (``RunContext.initial_state``: weights, BN statistics, all of it; with
``model.init`` the loaded weights, the lottery ticket of a pretrained network); ``k > 0``
resets them to their values after epoch ``k`` of the dense run (Frankle et al., "Stabilizing
the Lottery Ticket Hypothesis", 2019) and retrains epochs ``k+1 .. train.epochs`` of the same
schedule, i.e. exactly the remainder the rewound weights belong to. ``retrain.mode`` and
``retrain.epochs`` do not apply: rewinding and retraining the dense schedule define the method.
``prune.dense_epochs`` shortens (or, at 0, skips) the dense training before the magnitudes are
ranked; it needs ``rewind_epoch: 0``, since a later rewind point belongs to the full schedule.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from ebcompress.baselines._common import (
    channel_graph,
    channel_scores,
    clone_state,
    group_layers,
)
from ebcompress.baselines._masks import (
    WeightMaskCallback,
    full_ticket,
    global_magnitude_masks,
    masked_state,
    prunable_weights,
    weight_sparsity,
)
from ebcompress.baselines.lottery_ticket_options import LotteryTicketOptions
from ebcompress.engine.distributed import unwrap
from ebcompress.errors import UserError
from ebcompress.methods.base import (
    RetrainPlan,
    RunContext,
    SearchOutcome,
    train_dense,
)


class RewindSnapshot:
    """Engine callback: a CPU copy of the model's state after epoch ``epoch`` (1-based).

    The copy travels in the search checkpoint, so a resumed search still rewinds correctly.
    """

    def __init__(self, model: nn.Module, epoch: int) -> None:
        self.model = model
        self.epoch = epoch
        self.state: dict[str, Tensor] | None = None

    def end_of_epoch(self, epoch: int, stats: Any) -> bool:
        if epoch == self.epoch:
            self.state = clone_state(unwrap(self.model))
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epoch") == self.epoch:
            self.state = state.get("state")


class LotteryTicket:
    """Train dense, prune by magnitude, rewind the survivors, retrain (one-shot LT)."""

    def search(self, run: RunContext) -> SearchOutcome:
        recipe, prune = run.recipe, run.recipe.prune
        options: LotteryTicketOptions = prune.lt
        if options.rewind_epoch >= recipe.train.epochs:
            raise UserError(
                f"prune.lt.rewind_epoch={options.rewind_epoch} must be below "
                f"train.epochs={recipe.train.epochs} (0 rewinds to initialisation)"
            )
        dense = prune.dense_epochs
        if options.rewind_epoch and dense is not None and dense != recipe.train.epochs:
            raise UserError(
                f"prune.lt.rewind_epoch={options.rewind_epoch} rewinds into the full dense "
                f"schedule, which prune.dense_epochs={dense} replaces; set rewind_epoch: 0 "
                "(rewind to the starting weights) or remove prune.dense_epochs"
            )
        model = unwrap(run.model)
        graph = channel_graph(run)
        # Without a pipeline-provided initial state, the untrained model is the initialisation.
        initial = run.initial_state if run.initial_state is not None else clone_state(model)
        snapshot = RewindSnapshot(model, options.rewind_epoch) if options.rewind_epoch else None
        trainer = train_dense(run, [snapshot] if snapshot else [])
        rewound = initial if snapshot is None else snapshot.state
        if rewound is None:  # only a resumed search checkpoint written with another rewind_epoch
            raise UserError(
                f"the search checkpoint holds no weights of prune.lt.rewind_epoch="
                f"{options.rewind_epoch} (was it changed?); start afresh with --overwrite"
            )

        magnitudes = {
            name: weight.detach().abs() for name, weight in prunable_weights(model).items()
        }
        epoch = trainer.last_epoch
        extra: dict[str, Any] = {
            "granularity": options.granularity,
            "rewind_epoch": options.rewind_epoch,
        }
        if options.granularity == "channel":
            scores = channel_scores(group_layers(model, run.example_inputs), magnitudes)
            ticket = graph.draw(
                prune.ratio,
                prune.draw_options(),
                epoch=epoch,
                importance=scores,
                model_name=recipe.model.name,
            )
            ticket = replace(ticket, importance="weight_l1")
            return SearchOutcome(ticket, epoch, extra=extra, start_state=rewound)

        masks = global_magnitude_masks(magnitudes, prune.ratio)
        sparsity = weight_sparsity(masks)
        ticket = full_ticket(
            graph,
            prune.ratio,
            importance="weight_magnitude",
            epoch=epoch,
            model_name=recipe.model.name,
            weight_sparsity=sparsity,
        )
        extra["weight_sparsity"] = sparsity
        start = masked_state(rewound, masks)
        return SearchOutcome(ticket, epoch, weight_masks=masks, extra=extra, start_state=start)

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan:
        callbacks = [WeightMaskCallback(outcome.weight_masks)] if outcome.weight_masks else []
        return RetrainPlan(
            start_epoch=run.recipe.prune.lt.rewind_epoch,
            end_epoch=run.recipe.train.epochs,
            start_state=outcome.start_state,
            callbacks=callbacks,
        )

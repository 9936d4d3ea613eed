"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017) under the pipeline's Method protocol.

Search trains the dense network for the *whole* schedule (``train.epochs``) with the L1
penalty on the BatchNorm scales (``prune.sparsity``, applied as the subgradient
``grad += s * sign(gamma)``), then removes the fraction ``prune.ratio`` of channels with the
smallest ``|gamma|``, ranked globally (``prune.scope``). The slim network inherits the trained
weights and is fine-tuned for ``retrain.epochs`` (default: ``train.epochs``) on a fresh
schedule of that length, restarting the learning rate as the paper's fine-tuning does.
``retrain.mode: reinit`` instead trains the pruned architecture from scratch.

This is the method Early-Bird shortens: the same penalty and ranking, but the ticket is drawn
after the full dense schedule instead of when it emerges.

``prune.dense_epochs`` replaces that schedule (:func:`~ebcompress.methods.base.train_dense`).
At 0, from ``model.init``, there is no sparsity training at all: the channels are ranked by
the pretrained BatchNorm scales as they are, which the L1 penalty never pushed apart.
"""

from __future__ import annotations

from torch import Tensor

from ebcompress.baselines._common import AfterBackward, channel_graph
from ebcompress.earlybird.sparsity import BNL1Regularizer
from ebcompress.methods.base import (
    RetrainPlan,
    RunContext,
    SearchOutcome,
    train_dense,
)
from ebcompress.recipe import Recipe


def finetune_plan(recipe: Recipe, start_state: dict[str, Tensor] | None = None) -> RetrainPlan:
    """Fine-tune after a full dense schedule: ``retrain.epochs`` (default ``train.epochs``)
    from epoch 0 of a schedule of that length, starting from ``start_state`` (None: the
    searched weights); ``retrain.mode: reinit`` trains the slim architecture from scratch."""
    epochs = recipe.retrain.epochs or recipe.train.epochs
    if recipe.retrain.mode == "reinit":
        return RetrainPlan(start_epoch=0, end_epoch=epochs, reinit=True)
    return RetrainPlan(start_epoch=0, end_epoch=epochs, start_state=start_state)


class NetworkSlimming:
    """Full sparsity training, global BN-scale prune, fine-tune (Liu et al., 2017)."""

    def search(self, run: RunContext) -> SearchOutcome:
        recipe, prune = run.recipe, run.recipe.prune
        graph = channel_graph(run)
        penalty = BNL1Regularizer(graph.bn_modules(), prune.sparsity)
        trainer = train_dense(run, [AfterBackward(penalty)])
        ticket = graph.draw(
            prune.ratio,
            prune.draw_options(),
            epoch=trainer.last_epoch,
            model_name=recipe.model.name,
        )
        return SearchOutcome(ticket, trainer.last_epoch, extra={"sparsity": prune.sparsity})

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan:
        return finetune_plan(run.recipe)

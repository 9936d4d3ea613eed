"""EB Train as a pipeline Method (You et al., ICLR 2020, Algorithm 1).

Search trains the dense network with the BN-L1 subgradient and draws a mask every epoch; it
stops as soon as the primary ratio's ticket emerges (or at ``prune.max_search_epochs``, then
drawing the newest mask and saying so). No ticket emerges before the training top-1 shows
the network has learned; a search that never gets there stops with a one-line error
(:func:`ebcompress.methods.base.train_dense`). Retraining inherits the ticket's weights
(``retrain.mode: finetune``; unlike the paper's reference code, really) or re-initialises
(``reinit``), on a restarted full schedule by default (``retrain.schedule: restart``, the
paper's protocol) or on the rest of the dense schedule (``continue``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ebcompress.channels.capped import warn_capped
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.engine import distributed
from ebcompress.engine.progress import log
from ebcompress.engine.trainer import EpochStats
from ebcompress.methods.base import (
    RetrainPlan,
    RunContext,
    SearchOutcome,
    chance_top1,
    retrain_epochs_after_search,
    train_dense,
)
from ebcompress.recipe import Recipe
from ebcompress.run.paths import RunPaths


def early_bird_for(
    recipe: Recipe,
    model: nn.Module,
    example_inputs: torch.Tensor,
    ratios: list[float],
    *,
    chance: float | None = None,
) -> EarlyBird:
    """The :class:`EarlyBird` a recipe's ``prune`` section describes, watching ``ratios``;
    ``chance`` is the data's chance top-1 (default: one over the model's output width)."""
    prune = recipe.prune
    return EarlyBird(
        model,
        example_inputs,
        ratio=ratios,
        epsilon=prune.epsilon,
        window=prune.window,
        sparsity=prune.sparsity,
        draw_options=prune.draw_options(),
        model_name=recipe.model.name,
        min_search_epochs=prune.min_search_epochs,
        chance=chance,
        learning_margin=prune.learning_margin,
    )


class _DistanceLine:
    """After each search epoch, print the window's mask distance so a user watches emergence."""

    def __init__(self, bird: EarlyBird, epsilon: float) -> None:
        self.bird = bird
        self.epsilon = epsilon

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        parts = []
        for ratio in self.bird.ratios:
            latest = self.bird.window_distance(ratio)
            shown = "filling window" if latest is None else f"{latest:.4f}"
            mark = " emerged" if self.bird.emerged_epoch.get(ratio) is not None else ""
            parts.append(f"p={ratio:g}: {shown}{mark}")
        log(
            f"epoch {epoch}: max mask distance in window (eps {self.epsilon:g}) " + ", ".join(parts)
        )
        return False


class EarlyBirdTrain:
    """Early-Bird ticket search followed by slim retraining (catalogue key ``eb``)."""

    def search(self, run: RunContext) -> SearchOutcome:
        recipe = run.recipe
        prune = recipe.prune
        ratios = [prune.ratio, *[r for r in prune.watch_ratios if r != prune.ratio]]
        bird = early_bird_for(
            recipe, run.model, run.example_inputs, ratios, chance=chance_top1(run.data)
        )
        limit = min(prune.max_search_epochs or recipe.train.epochs, recipe.train.epochs)
        trainer = train_dense(run, [bird, _DistanceLine(bird, prune.epsilon)], end_epoch=limit)
        if run.run_dir is not None and distributed.is_main():
            bird.history.save(RunPaths(run.run_dir).masks)
        extra: dict[str, Any] = {
            "learned_epoch": bird.learning.learned_epoch,
            "emerged_epochs": {f"{r:g}": e for r, e in bird.emerged_epoch.items()},
            "window_max_distances": {
                f"{r:g}": bird.history.window_max_distances(r) for r in bird.ratios
            },
        }
        if bird.ticket is not None:
            return SearchOutcome(bird.ticket, trainer.last_epoch, emerged=True, extra=extra)
        ticket = bird.latest_ticket()
        warn_capped(ticket)
        note = (
            f"no ticket emerged within {trainer.last_epoch} epochs (epsilon {prune.epsilon:g}, "
            f"window {prune.window}); drew the newest mask instead"
        )
        log(note)
        return SearchOutcome(ticket, trainer.last_epoch, emerged=False, note=note, extra=extra)

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan:
        start, end = retrain_epochs_after_search(run.recipe, outcome.search_epochs)
        return RetrainPlan(
            start_epoch=start, end_epoch=end, reinit=run.recipe.retrain.mode == "reinit"
        )

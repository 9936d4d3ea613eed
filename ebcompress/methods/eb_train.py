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

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ebcompress.channels.capped import warn_capped
from ebcompress.channels.graph import ChannelGraph
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.earlybird.mask_history import MaskHistory
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
    dense_macs: int | None = None,
) -> EarlyBird:
    """The :class:`EarlyBird` a recipe's ``prune`` section describes, watching ``ratios``;
    ``chance`` is the data's chance top-1 (default: one over the model's output width).
    With a budget (``prune.target_macs``), ``dense_macs`` (``count_flops``' count of the
    dense model) makes its shares shares of that count (``ChannelGraph.calibrate_cost``)."""
    prune = recipe.prune
    graph = None
    if dense_macs is not None and prune.draw_options().budget is not None:
        graph = ChannelGraph(model, example_inputs)
        graph.calibrate_cost(dense_macs)
    return EarlyBird(
        model,
        example_inputs,
        ratio=ratios,
        epsilon=prune.epsilon,
        window=prune.window,
        sparsity=prune.sparsity,
        draw_options=prune.draw_options(),
        graph=graph,
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
        budget = self.bird.draw_options.budget
        for ratio in self.bird.ratios:
            latest = self.bird.window_distance(ratio)
            shown = "filling window" if latest is None else f"{latest:.4f}"
            mark = " emerged" if self.bird.emerged_epoch.get(ratio) is not None else ""
            label = f"p={ratio:g}" if budget is None else budget.describe()
            parts.append(f"{label}: {shown}{mark}")
        log(
            f"epoch {epoch}: max mask distance in window (eps {self.epsilon:g}) " + ", ".join(parts)
        )
        return False


def _watched(recipe: Recipe, ratio: float) -> list[float]:
    """The ratios a run of ``ratio`` watches: its own first, then ``prune.watch_ratios``."""
    return [ratio, *[r for r in recipe.prune.watch_ratios if r != ratio]]


def _search_extra(bird: EarlyBird, ratios: Sequence[float]) -> dict[str, Any]:
    """What a search records of ``ratios`` (one run's watched ratios) so far."""
    return {
        "learned_epoch": bird.learning.learned_epoch,
        "emerged_epochs": {f"{r:g}": bird.emerged_epoch[r] for r in ratios},
        "window_max_distances": {f"{r:g}": bird.history.window_max_distances(r) for r in ratios},
    }


def _no_ticket_emerged(recipe: Recipe, bird: EarlyBird, ratio: float, epochs: int) -> tuple:
    """The newest mask at ``ratio`` as the fallback ticket, and the note that says so."""
    ticket = bird.latest_ticket(ratio)
    warn_capped(ticket)
    note = (
        f"no ticket emerged within {epochs} epochs (epsilon {recipe.prune.epsilon:g}, "
        f"window {recipe.prune.window}); drew the newest mask instead"
    )
    log(note)
    return ticket, note


class RatioOutcome(NamedTuple):
    """One ratio's share of :func:`search_every_ratio`: what a run of that ratio alone would
    have at the end of its search."""

    ratio: float
    outcome: SearchOutcome
    weights: dict[str, torch.Tensor]  # the dense weights the ticket was drawn from
    masks: MaskHistory  # the masks of the ratios that run watches, up to its last epoch


OutcomeSink = Callable[[RatioOutcome], None]


class _UntilEveryRatio:
    """The detector as an engine callback that stops the search once every ratio in
    ``until`` has emerged (the detector alone stops at its primary ratio)."""

    def __init__(self, bird: EarlyBird, until: Sequence[float]) -> None:
        self.bird, self.until = bird, list(until)

    def after_backward(self, model: nn.Module) -> None:
        self.bird.regularize()

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        self.bird.end_of_epoch(epoch, stats)
        return all(self.bird.emerged_epoch[r] is not None for r in self.until)

    def state_dict(self) -> dict[str, Any]:
        return self.bird.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bird.load_state_dict(state)


class _OutcomeAtEmergence:
    """After each epoch, hand every ratio that emerged in it to ``sink``, exactly as a run of
    that ratio alone would have ended its search here."""

    def __init__(self, bird: EarlyBird, model: nn.Module, watched: dict, sink: OutcomeSink):
        self.bird, self.model, self.watched, self.sink = bird, model, watched, sink

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        for ratio in self.watched:
            if self.bird.emerged_epoch[ratio] == epoch:
                self.hand_on(ratio, SearchOutcome(self.bird.tickets[ratio], epoch))
        return False

    def hand_on(self, ratio: float, outcome: SearchOutcome) -> None:
        ratios = self.watched[ratio]
        outcome.extra = _search_extra(self.bird, ratios)
        weights = distributed.unwrap(self.model).state_dict()
        self.sink(RatioOutcome(ratio, outcome, weights, self.bird.history.select(ratios)))


def search_every_ratio(
    run: RunContext, ratios: Sequence[float], sink: OutcomeSink, *, pending: Sequence[float]
) -> None:
    """One EB search for several ratios of ``run.recipe`` (its ``prune.ratio`` aside).

    The detector watches ``ratios`` (and ``prune.watch_ratios``); the search goes on until
    each ratio in ``pending`` (some of ``ratios``) has emerged, or to
    ``prune.max_search_epochs``. In the epoch a pending ratio emerges, ``sink`` gets what a
    run of that ratio alone would have when its search ended (:class:`RatioOutcome`): the
    training does not depend on the ratios watched, so the ticket, epoch, weights and record
    are the same. A pending ratio that never emerged gets the newest mask at the end, as a
    run of its own would. Resumable from ``run.run_dir``'s search checkpoint: give the same
    ``ratios`` and, as ``pending``, those not yet handed on.
    """
    recipe, prune = run.recipe, run.recipe.prune
    every = [*dict.fromkeys(r for ratio in ratios for r in _watched(recipe, ratio))]
    bird = early_bird_for(
        recipe, run.model, run.example_inputs, every, chance=chance_top1(run.data)
    )
    limit = min(prune.max_search_epochs or recipe.train.epochs, recipe.train.epochs)
    hand_on = _OutcomeAtEmergence(bird, run.model, {r: _watched(recipe, r) for r in pending}, sink)
    callbacks = [_UntilEveryRatio(bird, pending), _DistanceLine(bird, prune.epsilon), hand_on]
    trainer = train_dense(run, callbacks, end_epoch=limit)
    if trainer.last_epoch < limit:
        return  # stopped because every pending ratio emerged
    for ratio in pending:
        if bird.emerged_epoch[ratio] is None:
            ticket, note = _no_ticket_emerged(recipe, bird, ratio, trainer.last_epoch)
            hand_on.hand_on(ratio, SearchOutcome(ticket, trainer.last_epoch, False, note))


class EarlyBirdTrain:
    """Early-Bird ticket search followed by slim retraining (catalogue key ``eb``)."""

    def search(self, run: RunContext) -> SearchOutcome:
        recipe = run.recipe
        prune = recipe.prune
        ratios = _watched(recipe, prune.ratio)
        bird = early_bird_for(
            recipe,
            run.model,
            run.example_inputs,
            ratios,
            chance=chance_top1(run.data),
            dense_macs=run.dense_macs,
        )
        limit = min(prune.max_search_epochs or recipe.train.epochs, recipe.train.epochs)
        trainer = train_dense(run, [bird, _DistanceLine(bird, prune.epsilon)], end_epoch=limit)
        if run.run_dir is not None and distributed.is_main():
            bird.history.save(RunPaths(run.run_dir).masks)
        extra = _search_extra(bird, ratios)
        if bird.ticket is not None:
            return SearchOutcome(bird.ticket, trainer.last_epoch, emerged=True, extra=extra)
        ticket, note = _no_ticket_emerged(recipe, bird, prune.ratio, trainer.last_epoch)
        return SearchOutcome(ticket, trainer.last_epoch, emerged=False, note=note, extra=extra)

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan:
        return retrain_plan_for(run.recipe, outcome)


def retrain_plan_for(recipe: Recipe, outcome: SearchOutcome) -> RetrainPlan:
    """EB's retraining of ``outcome``'s ticket under ``recipe``'s ``retrain`` section."""
    start, end = retrain_epochs_after_search(recipe, outcome.search_epochs)
    return RetrainPlan(start_epoch=start, end_epoch=end, reinit=recipe.retrain.mode == "reinit")

"""The Method protocol every pruning algorithm implements.

A method turns a recipe's dense network into a ticket and says how the slim network is
retrained. The pipeline (:mod:`ebcompress.run.pipeline`) owns everything else: building the model
and data, the run directory, checkpoints, the ledger, export and the report. So a method is
two decisions:

``search(run)``
    Train (or not) the dense network in ``run.model`` and draw a ticket. Early-Bird stops as
    soon as the ticket emerges; network slimming, lottery ticket and ThiNet train the full
    dense schedule; SNIP prunes at initialisation.
``retrain_plan(run, outcome)``
    Which weights the slim network starts from (inherited, re-initialised, rewound) and which
    epochs of the schedule it trains.

A method keeps no state between the two: everything retraining needs is in the outcome, which
:mod:`ebcompress.run.search_result` saves, so a resumed run plans from the saved one. The
methods are listed by key, with their options, in :mod:`ebcompress.methods.catalog`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Subset

from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import TrainingLedger
from ebcompress.data import DataSplit
from ebcompress.earlybird.learning import LearningCheck
from ebcompress.engine import distributed
from ebcompress.engine.metrics_file import copy_phase
from ebcompress.engine.trainer import Trainer
from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS
from ebcompress.methods.training import build_trainer, retrain_schedule
from ebcompress.recipe import Recipe
from ebcompress.registry import import_target
from ebcompress.run.paths import RunPaths


@dataclass
class RunContext:
    """What a method may use: the resolved recipe, the data, the dense model, the plumbing."""

    recipe: Recipe
    data: DataSplit
    model: nn.Module
    example_inputs: torch.Tensor
    run_dir: Path | None
    ledger: TrainingLedger
    device: torch.device
    dense_macs: int
    resume: bool = False
    progress: bool = True
    build_dense: Callable[[], nn.Module] | None = None  # a fresh, re-initialised dense model
    initial_state: dict[str, torch.Tensor] | None = (
        None  # dense weights at initialisation (LT rewind)
    )
    # Where the dense search phase checkpoints when several runs share it (compare's shared
    # phases, :mod:`ebcompress.run.shared`); None: the run directory.
    shared_search_dir: Path | None = None


@dataclass
class SearchOutcome:
    """The result of a method's search phase.

    ``ticket`` always describes the channel structure to retrain. Unstructured methods (LT and
    SNIP with ``granularity: unstructured``) keep every channel and put their sparsity in
    ``weight_masks`` (parameter name -> 0/1 tensor) instead. ``start_state`` is the dense
    state dict the slim network is cut from when that is not the searched weights left in
    ``run.model`` (LT's rewound survivors, SNIP's initialisation, ThiNet's rescaled weights).
    ``teacher_state`` is the searched dense network's state dict, kept for a ``retrain.distill``
    teacher ``dense`` (None otherwise).
    """

    ticket: Ticket
    search_epochs: int
    emerged: bool = True
    note: str = ""
    weight_masks: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    start_state: dict[str, torch.Tensor] | None = None
    teacher_state: dict[str, torch.Tensor] | None = None


@dataclass
class RetrainPlan:
    """How the slim network is retrained.

    ``start_state`` is a dense state dict to load before slimming (None: keep the searched
    weights; the pipeline re-initialises when ``reinit`` is set). Epochs index the recipe's
    dense schedule: ``start_epoch`` epochs are taken as done, training runs to ``end_epoch``.
    A window that does not end at ``train.epochs`` gets the schedule's milestones scaled to it.
    """

    start_epoch: int
    end_epoch: int
    reinit: bool = False
    start_state: dict[str, torch.Tensor] | None = None
    lr: float | None = None
    callbacks: list[Any] = field(default_factory=list)  # engine callbacks, e.g. fixed weight masks


class Method(Protocol):
    """A pruning algorithm under the pipeline's common interface (stateless: see above)."""

    def search(self, run: RunContext) -> SearchOutcome: ...

    def retrain_plan(self, run: RunContext, outcome: SearchOutcome) -> RetrainPlan: ...


def get_method(key: str) -> Method:
    """A fresh instance of the method ``key`` (its module is imported now); a UserError
    listing the registered keys for another."""
    return import_target(METHODS.get(key).implementation)()


def chance_top1(data: DataSplit) -> float:
    """The top-1 accuracy of always guessing the training set's most frequent class."""
    labels = _train_labels(data.train)
    if labels is None or labels.numel() == 0:
        return 1.0 / data.num_classes
    return float(torch.bincount(labels).max()) / labels.numel()


def _train_labels(dataset: Any) -> torch.Tensor | None:
    if isinstance(dataset, Subset):
        inner = _train_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices))]
    for attr in ("labels", "targets"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long)
    return None


def learning_check(run: RunContext) -> LearningCheck:
    """The recipe's learning criterion at the training data's chance level."""
    return LearningCheck(
        chance=chance_top1(run.data),
        num_classes=run.data.num_classes,
        margin=run.recipe.prune.learning_margin,
    )


def train_dense(
    run: RunContext, callbacks: Sequence[Any] = (), *, end_epoch: int | None = None
) -> Trainer:
    """Train ``run.model`` dense as phase ``search`` (ledger: dense MACs), up to ``end_epoch``
    (default: the whole schedule). Resumable like every phase: a finished search checkpoint is
    loaded, not re-run. Every method's search goes through here.

    With ``run.shared_search_dir`` the phase checkpoints there instead, so the first run of a
    compare trains it and the others load its finished checkpoint (what a resumed run does);
    its metrics lines are then copied into the run's own ``metrics.jsonl``.

    A dense network whose training top-1 never got clearly above chance
    (:func:`learning_check`) has nothing worth pruning: that is a one-line UserError naming
    what to change, raised before any ticket is drawn or retrained.

    ``prune.dense_epochs`` (network slimming, LT, ThiNet: the recipe refuses it elsewhere)
    replaces the full schedule when ``end_epoch`` is not given: N > 0 trains ``train``'s
    schedule scaled to N epochs (milestones, steps and warmup as :func:`retrain_schedule`
    scales them), 0 trains nothing, so the ticket is drawn from the starting weights
    (``model.init``, required then) and there is no training to check."""
    recipe, shared = run.recipe, run.shared_search_dir
    dense = recipe.prune.dense_epochs
    if dense is not None and end_epoch is None:
        if dense == 0 and recipe.model.init is None:
            raise UserError(
                "prune.dense_epochs: 0 prunes the starting weights without training them, but "
                "they are a random initialisation; set model.init to a trained weights file "
                "(or prune.dense_epochs to N epochs)"
            )
        if dense > 0:
            recipe = recipe.model_copy(update={"train": retrain_schedule(recipe.train, dense)})
        end_epoch = dense
    trainer = build_trainer(
        run.model,
        run.data,
        recipe,
        "search",
        device=run.device,
        run_dir=shared or run.run_dir,
        progress=run.progress,
        callbacks=callbacks,
        ledger=run.ledger,
        macs_per_sample=run.dense_macs,
        end_epoch=end_epoch,
    )
    history = trainer.fit(resume=run.resume or shared is not None)
    if shared is not None and run.run_dir is not None and distributed.is_main():
        copy_phase(RunPaths(shared).metrics, RunPaths(run.run_dir).metrics, "search")
    check = learning_check(run)
    for stats in history:
        check.update(stats.epoch, train_top1=stats.train_top1, train_loss=stats.train_loss)
    if history and not check.learned:
        raise UserError(
            f"the dense network did not learn in {len(history)} search epochs "
            f"({check.describe()}), so no ticket was drawn; change train.lr (now "
            f"{recipe.train.lr:g}), check the data (labels, data.mean/std) and data.augment, "
            "or lower prune.learning_margin"
        )
    return trainer


def retrain_epochs_after_search(recipe: Recipe, search_epochs: int) -> tuple[int, int]:
    """The retrain window when the slim net continues or restarts the dense schedule.

    ``schedule: restart`` (the default) and ``mode: reinit`` run a fresh schedule of
    ``retrain.epochs`` (default ``train.epochs``): the paper's protocol. ``schedule:
    continue`` resumes the dense schedule from the search's last epoch to ``train.epochs``;
    an explicit ``retrain.epochs`` then counts back from the schedule's end.
    """
    total = recipe.train.epochs
    if recipe.retrain.mode == "reinit" or recipe.retrain.schedule == "restart":
        return 0, recipe.retrain.epochs or total
    if recipe.retrain.epochs is not None:
        return max(0, total - recipe.retrain.epochs), total
    if search_epochs >= total:
        raise UserError(
            f"the search used all {total} epochs of train.epochs, so retrain.schedule=continue "
            "has nothing left; set retrain.schedule=restart or retrain.epochs=N"
        )
    return search_epochs, total

"""``ebcompress plan``: time a few steps of a recipe's networks here and forecast its phases.

The forecast (:class:`~ebcompress.cost.forecast.Forecast`) is made the way the pipeline
trains: the recipe's data (``load_data``), its dense model, the trainer :func:`~ebcompress.
methods.training.build_trainer` builds (optimiser, precision, checkpoints into a temporary
folder, evaluation after every epoch), with the Early-Bird detector as the search's callback.
Each network trains ``1 + TIMED_EPOCHS`` short epochs of ``steps`` full batches on a subset
of the training set (the first epoch is the warm-up) and is evaluated on up to
``eval_batches`` test batches; the per-sample times are scaled to the full splits, the rest
of an epoch (checkpoint, callbacks) is kept as it is. From the dense run come three rates:
EB's search as timed, network slimming's search without the mask drawing, and dense
training without the BN-L1 penalty either (both timed apart inside it). The slim network is
the timed dense one slimmed to the mask the detector drew at the recipe's ratio (or budget)
after the last timed epoch, and is timed the same way as a retraining. Its MACs stand in for
those of the run's ticket, which nobody knows before the search (``macs_estimated``). With
``retrain.distill``, the retraining is timed with a teacher (:func:`_teacher`) and its rate
counts the teacher's forward FLOPs, as the run's ledger does. Only one process is modelled
(no DDP).

The global RNG states are restored afterwards, so a run started after the forecast in the
same process (``ebcompress prune --plan``) trains exactly as one without it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ebcompress.channels.capped import CappedGroupsWarning
from ebcompress.channels.slim import slim
from ebcompress.cost.flops import TrainingLedger, count_flops
from ebcompress.cost.forecast import Forecast, PhaseRate
from ebcompress.data import DataSplit, load_data
from ebcompress.deploy.bench import machine_info
from ebcompress.engine.checkpoint import capture_rng_state, restore_rng_state
from ebcompress.engine.distill import Distillation, DistillConfig
from ebcompress.engine.divergence import DivergenceError
from ebcompress.engine.preemption import Preempted
from ebcompress.engine.stats import EpochStats
from ebcompress.errors import UserError
from ebcompress.methods.base import RetrainPlan, chance_top1
from ebcompress.methods.data import data_options
from ebcompress.methods.eb_train import early_bird_for
from ebcompress.methods.training import build_trainer, retrain_schedule
from ebcompress.models import build_model
from ebcompress.recipe import Recipe
from ebcompress.run.pipeline import training_device
from ebcompress.run.plan_scenarios import scenarios

TIMED_EPOCHS = 2  # short epochs timed after the warm-up one
DEFAULT_STEPS = 20
DEFAULT_EVAL_BATCHES = 10


def samples_per_epoch(n: int, batch_size: int) -> int:
    """Training samples one process sees per epoch: all ``n``, but a final batch of one
    sample is dropped (the engine's loaders: BatchNorm cannot train on it)."""
    return n - 1 if n > 1 and n % batch_size == 1 else n


def make_forecast(
    recipe: Recipe,
    *,
    data_root: str | None = None,
    device: str | None = None,
    steps: int = DEFAULT_STEPS,
    eval_batches: int = DEFAULT_EVAL_BATCHES,
) -> Forecast:
    """Time ``steps`` training steps (after a warm-up epoch as long) of ``recipe``'s dense and
    slimmed networks on ``device`` and forecast dense training, EB Train and network
    slimming; see the module docstring. A recipe the pipeline would refuse (data, model) is
    refused here with the same one-line UserError."""
    if steps < 1 or eval_batches < 1:
        raise UserError(f"plan: steps ({steps}) and eval batches ({eval_batches}) must be >= 1")
    rng = capture_rng_state()
    try:
        return _forecast(recipe, data_root, training_device(device), steps, eval_batches)
    except DivergenceError:
        raise UserError(
            f"plan: the training loss became NaN/inf within the timed steps of {recipe.name}; "
            f"the run would diverge too: lower train.lr (now {recipe.train.lr:g})"
        ) from None
    except Preempted:
        raise UserError("plan: stopped by a signal while timing; nothing was written") from None
    finally:
        restore_rng_state(rng)


def _forecast(
    recipe: Recipe, data_root: str | None, dev: torch.device, steps: int, eval_batches: int
) -> Forecast:
    began = time.perf_counter()
    setup: dict[str, float] = {}
    with _stopwatch(setup, "data"):
        data = load_data(data_options(recipe.data), root=data_root, seed=recipe.seed)
    input_size = (data.in_chans, data.image_size, data.image_size)
    with _stopwatch(setup, "dense_model"):
        model = _build(recipe, data, dev)
        dense_cost = count_flops(model, input_size)
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(dev)
    prune, batch = recipe.prune, recipe.train.batch_size
    with _stopwatch(setup, "eb_detector"):
        ratios = [prune.ratio, *[r for r in prune.watch_ratios if r != prune.ratio]]
        bird = early_bird_for(
            recipe, model, example, ratios, chance=chance_top1(data), dense_macs=dense_cost.macs
        )
    subset = _subset(data, steps * batch, eval_batches * batch)
    full = _Sizes(samples_per_epoch(len(data.train), batch), len(data.test), batch)
    timing_recipe = recipe.model_copy(
        update={"train": retrain_schedule(recipe.train, 1 + TIMED_EPOCHS)}
    )
    dense = _time_network(
        model, subset, timing_recipe, "search", dev, dense_cost.macs, _TimedDetector(bird)
    )
    # The detector drew a mask after every timed epoch: BN scales that a few hundred BN-L1
    # steps have begun to spread predict the run's ticket better than random ones (on the
    # quickstart 40.1 % of the dense MACs against the run's 40.2 %; random scales: 47.8 %).
    ticket = bird.latest_ticket(prune.ratio)
    with _stopwatch(setup, "slim"):  # what the pipeline does before retraining
        slim_model = slim(model, ticket, example)
        slim_macs = count_flops(slim_model, input_size).macs
    teacher, teacher_note = _teacher(recipe, data, model, dev)  # slim() copied the dense net
    slimmed = _time_network(
        slim_model,
        subset,
        recipe,
        "retrain",
        dev,
        slim_macs,
        _EpochClock(),
        plan=RetrainPlan(start_epoch=0, end_epoch=1 + TIMED_EPOCHS),
        distill=teacher,
    )
    search = dense.rate(full, dense_cost.macs)
    without_masks = replace(search, other_seconds=max(0.0, search.other_seconds - dense.masks))
    penalty = dense.penalty_per_step * math.ceil(full.train / batch)
    plain = replace(
        without_masks,
        train_seconds=max(0.0, search.train_seconds - penalty),
        joules=_scaled(search.joules, search.train_seconds, search.train_seconds - penalty),
    )
    teacher_macs = 0 if teacher is None else teacher.macs_per_sample or 0
    retrain = replace(
        slimmed.rate(full, slim_macs), macs_estimated=True, teacher_macs_per_sample=teacher_macs
    )
    rows, notes = scenarios(recipe)
    notes.append(
        f"retraining timed on the slim network of the mask the detector drew at p = "
        f"{ticket.ratio:g} after the timed steps ({slim_macs:,} MACs per sample, "
        f"{slim_macs / dense_cost.macs:.1%} of dense); the run's own ticket decides its MACs"
    )
    notes += [teacher_note] if teacher_note else []
    if recipe.prune.method not in ("eb", "ns"):
        notes.append(
            f"prune.method {recipe.prune.method!r} is not forecast (its phases differ); "
            "dense, eb and ns are"
        )
    notes.append(f"the forecast took {time.perf_counter() - began:.1f} s")
    return Forecast(
        recipe=recipe.name,
        method=recipe.prune.method,
        device=str(dev),
        machine=machine_info(dev.type),
        timed_steps=min(steps, math.ceil(len(subset.train) / batch)) * TIMED_EPOCHS,
        rates={
            "dense": {"train": plain},
            "eb": {"search": search, "retrain": retrain},
            "ns": {"search": without_masks, "retrain": retrain},
        },
        scenarios=tuple(rows),
        setup_seconds=setup,
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class _Sizes:
    train: int  # training samples per epoch
    test: int
    batch: int


@dataclass(frozen=True)
class _Timed:
    """One network's short epochs on the subset, warm-up first."""

    subset: _Sizes
    train: list[float]  # each epoch's training pass
    cycles: list[float]  # each epoch's wall, from the end of the previous one
    cpu_cycles: list[float]  # the same in this process's CPU time
    eval_seconds: float  # one evaluation of the subset's test set, warm
    masks: float  # per epoch: the detector's mask drawing (0 without a detector)
    penalty_per_step: float  # the detector's BN-L1 penalty
    joules: list[float | None]  # each epoch's training pass, measured

    def rate(self, full: _Sizes, macs: int) -> PhaseRate:
        """This network's epoch on the full splits."""
        train = statistics.fmean(self.train[1:])
        cycle = statistics.fmean(self.cycles[1:])
        per_sample = train / max(self.subset.train, 1)
        timed_joules = self.joules[1:]
        joules = (
            None
            if any(j is None for j in timed_joules)
            else statistics.fmean(timed_joules) / max(self.subset.train, 1) * full.train
        )
        return PhaseRate(
            macs_per_sample=macs,
            samples_per_epoch=full.train,
            train_seconds=per_sample * full.train,
            eval_seconds=self.eval_seconds / max(self.subset.test, 1) * full.test,
            other_seconds=max(0.0, cycle - train - self.eval_seconds),
            first_train_extra=max(0.0, self.train[0] - train),
            first_epoch_extra=max(0.0, self.cycles[0] - cycle),
            joules=joules,
            cpu_share=statistics.fmean(self.cpu_cycles[1:]) / cycle if cycle > 0 else None,
        )


class _EpochClock:
    """Engine callback: when each epoch ended, and its training pass's joules (the ledger's)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.joules: list[float | None] = []
        self.masks: list[float] = []
        self.penalty: list[float] = []  # per epoch, summed over its steps
        self.ledger: TrainingLedger | None = None
        self._joules_so_far = 0.0

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        cost = self.ledger.phases.get(stats.phase) if self.ledger is not None else None
        total = None if cost is None else cost.joules
        self.joules.append(None if total is None else total - self._joules_so_far)
        self._joules_so_far = total or 0.0
        return False


class _TimedDetector(_EpochClock):
    """The Early-Bird detector as the search's callback, its penalty and mask drawing timed;
    it never stops the timing run (a ticket could emerge in a short window)."""

    def __init__(self, bird: Any) -> None:
        super().__init__()
        self.bird = bird
        self._penalty = 0.0

    def after_backward(self, model: nn.Module) -> None:
        start = time.perf_counter()
        self.bird.regularize()
        self._penalty += time.perf_counter() - start

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        start = time.perf_counter()
        self.bird.end_of_epoch(epoch, stats)
        self.masks.append(time.perf_counter() - start)
        self.penalty.append(self._penalty)
        self._penalty = 0.0
        return super().end_of_epoch(epoch, stats)

    def state_dict(self) -> dict[str, Any]:  # checkpointed as the real detector is
        return self.bird.state_dict()


def _time_network(
    model: nn.Module,
    data: DataSplit,
    recipe: Recipe,
    phase: str,
    dev: torch.device,
    macs: int,
    clock: _EpochClock,
    plan: RetrainPlan | None = None,
    distill: Distillation | None = None,
) -> _Timed:
    """Train ``model`` (in place: the forecast throws it away) 1 + TIMED_EPOCHS epochs on
    ``data`` as ``phase`` of ``recipe``, with ``distill``'s teacher if any, and time it."""
    ledger = TrainingLedger()
    clock.ledger = ledger
    with tempfile.TemporaryDirectory(prefix="ebcompress-plan-") as scratch:
        trainer = build_trainer(
            model,
            data,
            recipe,
            phase,
            device=dev,
            run_dir=Path(scratch),
            progress=False,
            callbacks=[clock],
            ledger=ledger,
            macs_per_sample=macs,
            plan=plan,
            distill=distill,
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            # a ticket may emerge in the timing run; its capped groups are the run's to name
            warnings.simplefilter("ignore", CappedGroupsWarning)
            history = trainer.fit()
        evaluations = []
        for _ in range(2):
            begin = time.perf_counter()
            trainer.evaluate()
            evaluations.append(time.perf_counter() - begin)
    batch = recipe.train.batch_size
    timed_steps = math.ceil(history[0].samples / batch) * TIMED_EPOCHS
    return _Timed(
        subset=_Sizes(history[0].samples, len(data.test), batch),
        train=[stats.seconds for stats in history],
        cycles=[b - a for a, b in zip([start, *clock.ends], clock.ends, strict=False)],
        cpu_cycles=[
            b - a for a, b in zip([cpu_start, *clock.cpu_ends], clock.cpu_ends, strict=False)
        ],
        eval_seconds=statistics.fmean(evaluations),
        masks=statistics.fmean(clock.masks[1:]) if clock.masks else 0.0,
        penalty_per_step=sum(clock.penalty[1:]) / max(timed_steps, 1),
        joules=clock.joules,
    )


def _scaled(joules: float | None, seconds: float, to_seconds: float) -> float | None:
    """Energy at the same power for ``to_seconds`` instead of ``seconds``."""
    if joules is None or seconds <= 0:
        return joules
    return joules * max(0.0, to_seconds) / seconds


def _subset(data: DataSplit, train: int, test: int) -> DataSplit:
    """The first ``train`` / ``test`` samples of each split (all, when it is smaller)."""
    n_train, n_test = min(train, len(data.train)), min(test, len(data.test))
    return replace(
        data,
        train=data.train if n_train == len(data.train) else Subset(data.train, range(n_train)),
        test=data.test if n_test == len(data.test) else Subset(data.test, range(n_test)),
    )


@contextlib.contextmanager
def _stopwatch(into: dict[str, float], name: str) -> Iterator[None]:
    """Adds the block's seconds to ``into[name]``."""
    start = time.perf_counter()
    yield
    into[name] = into.get(name, 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------- networks


def _build(recipe: Recipe, data: DataSplit, dev: torch.device, seed_offset: int = 0) -> nn.Module:
    """The recipe's dense network, randomly initialised (the timing does not need trained
    weights, so ``model.init`` is not read)."""
    torch.manual_seed(recipe.seed + seed_offset)
    m = recipe.model
    return build_model(m.name, data.num_classes, data.in_chans, **m.kwargs).to(dev)


def _teacher(
    recipe: Recipe, data: DataSplit, dense: nn.Module, dev: torch.device
) -> tuple[Distillation | None, str]:
    """``retrain.distill``'s teacher for the timing (None without one) and the forecast's note
    on it: the timed ``dense`` network for ``teacher: dense``, else the file's architecture
    (``distill.model``, default the recipe's) randomly initialised: only its cost is timed."""
    distill = recipe.retrain.distill
    if distill is None:
        return None, ""
    teacher, which = dense, "the dense network"
    if distill.from_file:
        name = distill.model or recipe.model.name
        kwargs = distill.kwargs if distill.model else recipe.model.kwargs
        torch.manual_seed(recipe.seed)
        teacher = build_model(name, data.num_classes, data.in_chans, **kwargs).to(dev)
        which = f"a randomly initialised {name} ({distill.teacher} is not read)"
    macs = count_flops(
        teacher, (data.in_chans, data.image_size, data.image_size), training=False
    ).macs
    config = DistillConfig(alpha=distill.alpha, temperature=distill.temperature)
    return Distillation(teacher, config, macs_per_sample=macs), (
        f"retraining timed distilling from {which}: its forward, {macs:,} MACs per sample, is "
        "in the retraining's FLOPs (2 x teacher MACs x samples) and time"
    )

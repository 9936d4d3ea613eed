"""The training and evaluation loop every phase runs: dense search, retraining, baselines.

One :class:`Trainer` trains one phase (epochs ``start_epoch+1 .. end_epoch`` of a schedule)
with SGD and cross-entropy, evaluates after every epoch with exact top-1/top-5 counts,
calls the callbacks (the Early-Bird detector, the BN-L1 regulariser of network slimming),
and, given a run directory, writes ``metrics.jsonl`` and an atomic checkpoint per epoch
from which :meth:`Trainer.fit` resumes bit-exactly (the shuffle order of epoch ``e`` is a
function of ``(seed, e)``, and every RNG state is checkpointed).

``train.checkpoint_every`` adds checkpoints inside an epoch, and SIGTERM / SIGINT during
:meth:`Trainer.fit` finish the step in flight, write one and raise
:class:`Preempted`. Such a checkpoint also holds the step reached, each
rank's per-step losses, hits and batch sizes so far, and each rank's RNG states. A resume
rebuilds the epoch's loader iterator exactly as the epoch began (same sampler epoch, same
loader-generator seed), fetches and discards the batches already trained (which replays the
sampler and the workers' own RNG streams), then restores the RNG states of that step, so the
rest of the epoch draws what an uninterrupted run draws. The energy of an epoch resumed part
way is not measured (None), never a part passed off as the whole.

Under ``torchrun`` the model is wrapped in DistributedDataParallel, metrics are summed over
ranks before they are divided, and only rank 0 writes files or prints (and reads checkpoints,
which it broadcasts). Each epoch's training pass is metered with the hardware energy counters
(:mod:`ebcompress.cost.energy`): the ledger gets the joules summed over ranks, or None ("not
measured") when some rank's work is not covered by a counter. Energy is never estimated.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ebcompress.cost.energy import EnergyCounter, EnergyMeter, available_counters, nvml_counters
from ebcompress.data import skipped_images
from ebcompress.engine import distributed
from ebcompress.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from ebcompress.engine.divergence import DivergenceError, NonFiniteWatch
from ebcompress.engine.metrics_file import append_entry, truncate_phase
from ebcompress.engine.optim import build_optimizer, build_scheduler, rebase_lr
from ebcompress.engine.precision import precision_policy
from ebcompress.engine.preemption import (
    CheckpointEvery,
    Preempted,
    StopSignals,
    parse_checkpoint_every,
)
from ebcompress.engine.progress import TrainingProgress, log
from ebcompress.errors import UserError
from ebcompress.recipe import TrainConfig

if TYPE_CHECKING:
    from ebcompress.cost.flops import TrainingLedger
    from ebcompress.data import DataSplit

__all__ = ["Callback", "EpochStats", "Trainer", "build_optimizer", "build_scheduler"]

CHECKPOINT_FORMAT = 1
_HEALTH_EVERY = 32  # steps between checks for a non-finite loss (and live-bar updates)
# Under DDP the ranks agree on "stop now" / "checkpoint now (by the clock)" with one 2-value
# all-reduce every this many steps. Its .tolist() waits for the device, so doing it every
# step would stop the host queueing kernels ahead; every 8 steps that stall is amortised,
# and a SIGTERM waits at most 7 more steps (well inside a scheduler's grace period). Step
# counts (checkpoint_every: N steps) need no agreement: every rank counts the same steps.
_AGREE_EVERY = 8


@dataclass(frozen=True)
class EpochStats:
    """One epoch of one phase; ``epoch`` counts the schedule's completed epochs (1-based).

    ``seconds`` is the wall time of the epoch's training pass (evaluation excluded) and
    ``samples`` the training samples seen in it, summed over ranks. Losses and accuracies
    are exact means over all samples; ``test_loss`` is plain cross-entropy (no smoothing).
    """

    phase: str
    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    test_loss: float
    test_top1: float
    test_top5: float
    seconds: float
    images_per_s: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochStats:
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def summary(self, last_epoch: int) -> str:
        return (
            f"{self.phase} {self.epoch}/{last_epoch}  lr {self.lr:.4g}  "
            f"train loss {self.train_loss:.4f} top-1 {100 * self.train_top1:.2f}%  "
            f"test loss {self.test_loss:.4f} top-1 {100 * self.test_top1:.2f}% "
            f"top-5 {100 * self.test_top5:.2f}%  {self.seconds:.1f}s {self.images_per_s:,.0f} img/s"
        )


class Callback(Protocol):
    """Hooks into :class:`Trainer`. Every method is optional (looked up with getattr).

    ``after_backward(model)`` runs between backward and the optimiser step on the unwrapped
    model with unscaled gradients; ``end_of_epoch(epoch, stats)`` runs after evaluation and
    returns True to stop the phase; ``state_dict``/``load_state_dict`` travel in the
    checkpoint and must hold only weights_only-loadable values.
    """

    def after_backward(self, model: nn.Module) -> None: ...
    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices r, r+w, ... in order, without padding (exact eval)."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = range(rank, size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _epoch_seed(seed: int, epoch_index: int) -> int:
    """A seed for the loader's generator (worker seeds) that depends only on (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch_index]).generate_state(1, np.uint64)[0] >> 1)


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r} requested but CUDA is not available; use cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _default_energy_counters(device: torch.device) -> tuple[list[EnergyCounter], bool]:
    """This rank's counters, and whether they cover its work.

    A GPU rank reads its GPU through NVML. RAPL zones measure whole sockets, so only one process
    per machine (LOCAL_RANK 0) reads them; the machine's other CPU ranks count as covered by it
    (if it has no RAPL it reports itself uncovered, and the epoch is not measured).
    """
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        counters: list[EnergyCounter] = list(nvml_counters(device))
        return counters, bool(counters) or device.type == "cpu"
    counters = available_counters(device)
    if device.type == "cuda":
        return counters, any(counter.name.startswith("nvml:") for counter in counters)
    return counters, bool(counters)


class Trainer:
    """Trains ``model`` for one phase; see the module docstring for what it writes.

    ``lr`` and ``precision`` override ``cfg.lr`` and ``cfg.precision``. ``ledger`` (with
    ``macs_per_sample``, the forward MACs of one sample of this model) receives the phase's
    training cost after every epoch, with the measured joules. ``energy_counters`` replaces
    the counters found on this machine (``[]``: measure nothing).

    With ``cfg.sync_bn`` under DDP (CUDA only) the BatchNorm layers are SyncBatchNorm while
    :meth:`fit` runs; afterwards the model holds its own BatchNorm modules again, which share
    the trained parameters and statistics.
    """

    def __init__(
        self,
        model: nn.Module,
        data: DataSplit,
        cfg: TrainConfig,
        *,
        phase: str,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        lr: float | None = None,
        precision: str | None = None,
        callbacks: Sequence[Callback] = (),
        run_dir: Path | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        ledger: TrainingLedger | None = None,
        macs_per_sample: int | None = None,
        progress: bool = True,
        num_workers: int = 0,
        energy_counters: Sequence[EnergyCounter] | None = None,
    ) -> None:
        if ledger is not None and macs_per_sample is None:
            raise ValueError("Trainer: a ledger needs macs_per_sample (see flops.count_flops)")
        self.end_epoch = cfg.epochs if end_epoch is None else end_epoch
        if not 0 <= start_epoch <= self.end_epoch:
            raise UserError(
                f"phase {phase!r}: start epoch {start_epoch} must lie in [0, {self.end_epoch}] "
                "(check train.epochs / retrain.epochs)"
            )
        self.cfg, self.phase, self.data, self.seed = cfg, phase, data, seed
        self.start_epoch = start_epoch
        self.base_lr = cfg.lr if lr is None else lr
        self.callbacks = list(callbacks)
        self.ledger, self.macs_per_sample = ledger, macs_per_sample
        self.show_progress = progress
        self.device = _resolve_device(device)
        self.precision = precision_policy(precision or cfg.precision, self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format

        model = model.to(self.device, memory_format=self.memory_format)
        self._plain_batchnorms: dict[str, nn.Module] = {}
        if distributed.is_initialized() and cfg.sync_bn:
            if self.device.type != "cuda":
                raise UserError(
                    "train.sync_bn: SyncBatchNorm runs on CUDA devices only; "
                    "set train.sync_bn=false for CPU training"
                )
            self._plain_batchnorms = {
                name: module
                for name, module in model.named_modules()
                if name and isinstance(module, nn.modules.batchnorm._BatchNorm)
            }
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = self.precision.prepare(model)
        self.net: nn.Module = self.model
        if distributed.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, cfg, self.base_lr)
        self.precision.prepare_optimizer(self.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg, start_epoch)
        self.scaler = self.precision.make_scaler()
        self._build_loaders(num_workers)
        if energy_counters is None:
            counters, self._energy_covered = _default_energy_counters(self.device)
        else:
            counters, self._energy_covered = list(energy_counters), bool(energy_counters)
        self.energy = EnergyMeter(counters)

        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint_path = (
            None if self.run_dir is None else self.run_dir / "checkpoints" / phase / "last.pt"
        )
        self.metrics_path = None if self.run_dir is None else self.run_dir / "metrics.jsonl"
        self.history: list[EpochStats] = []
        self.last_epoch = start_epoch
        self.stopped_early = False
        self._saved_epoch: int | None = None
        self._signals = StopSignals()  # replaced (fresh flag, handlers installed) by fit()
        self._partial: dict[str, Any] | None = None  # a mid-epoch resume's state, see _run_epoch
        self._skipped_images: set[str] = set()  # unreadable files already logged

    def _build_loaders(self, num_workers: int) -> None:
        rank, world = distributed.rank(), distributed.world_size()
        pin = self.device.type == "cuda"
        # DistributedSampler also serves a world of one: its order is a function of seed+epoch.
        self.train_sampler = DistributedSampler(
            self.data.train, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        # BatchNorm cannot train on a final batch of one sample, so such a batch is dropped.
        per_rank = len(self.train_sampler)
        self.loader_generator = torch.Generator()
        self.train_loader = DataLoader(
            self.data.train,
            batch_size=self.cfg.batch_size,
            sampler=self.train_sampler,
            num_workers=num_workers,
            pin_memory=pin,
            drop_last=per_rank > 1 and per_rank % self.cfg.batch_size == 1,
            generator=self.loader_generator,
        )
        self.test_loader = DataLoader(
            self.data.test,
            batch_size=self.cfg.batch_size,
            sampler=_ShardSampler(len(self.data.test), rank, world),
            num_workers=num_workers,
            pin_memory=pin,
        )

    def _to_device(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------------- public

    def fit(self, resume: bool = False) -> list[EpochStats]:
        """Train the phase (or its remainder when resuming); the phase's full history.

        A phase whose checkpoint stopped early or reached ``end_epoch`` is not re-run: its
        saved history is returned (and its model, ledger and callback states are loaded). A
        mid-epoch checkpoint continues its epoch at the next step.

        With a run directory, SIGTERM or SIGINT ends the step in flight, saves a checkpoint
        (rank 0) and raises :class:`~ebcompress.engine.preemption.Preempted` on every rank; the
        previous signal handlers are restored when this returns or raises.
        """
        # Only a run that can checkpoint turns signals into a clean stop; otherwise the
        # caller's own SIGINT/SIGTERM behaviour is left alone.
        self._signals = StopSignals()
        try:
            if self.checkpoint_path is None:
                return self._fit(resume)
            with self._signals:
                return self._fit(resume)
        finally:
            if self.energy.running:  # an epoch that raised
                self.energy.stop()
            self._restore_batchnorms()

    def _fit(self, resume: bool) -> list[EpochStats]:
        state = self._read_checkpoint() if resume and self.checkpoint_path else None
        self._partial = None
        if state is not None:
            self._load_state(state)
            self._partial = self._partial_for_this_rank(state.get("partial"))
            if self._partial is None and (self.stopped_early or self.last_epoch >= self.end_epoch):
                return list(self.history)
        elif self.checkpoint_path is not None and distributed.is_main():
            remove_checkpoints(self.checkpoint_path)
            truncate_phase(self.metrics_path, self.phase, keep_through=self.start_epoch)

        first = self.last_epoch + 1
        with TrainingProgress(self.phase, first, self.end_epoch, self.show_progress) as bar:
            for epoch in range(first, self.end_epoch + 1):
                stats = self._run_epoch(epoch, bar)
                bar.end_epoch(stats.summary(self.end_epoch))
                self._log_skipped_images(epoch)
                self.history.append(stats)
                self.last_epoch = epoch
                self.stopped_early, signalled = self._ask_callbacks_to_stop(epoch, stats)
                self._record(stats, finished=self.stopped_early or epoch == self.end_epoch)
                if signalled:
                    raise self._preempted(f"after {self.phase} epoch {epoch} of {self.end_epoch}")
                if self.stopped_early:
                    break
        return list(self.history)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Exact test metrics: ``{"loss", "top1", "top5", "samples"}`` (sums over all ranks / n).

        top-5 is top-min(5, num_classes).
        """
        was_training = self.model.training
        self.model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        k = min(5, self.data.num_classes)
        with self.precision.autocast():
            for batch in self.test_loader:
                images, labels = self._to_device(*batch)
                logits = self.model(images).float()
                hits = logits.topk(k, dim=1).indices == labels[:, None]
                totals[0] += F.cross_entropy(logits, labels, reduction="sum")
                totals[1] += hits[:, 0].sum()
                totals[2] += hits.any(dim=1).sum()
                totals[3] += labels.numel()
        self.model.train(was_training)
        loss, top1, top5, n = distributed.all_reduce_sum(totals).tolist()
        n_safe = max(n, 1.0)
        return {
            "loss": loss / n_safe,
            "top1": top1 / n_safe,
            "top5": top5 / n_safe,
            "samples": int(n),
        }

    # ------------------------------------------------------------------------- one epoch

    def _run_epoch(self, epoch: int, bar: TrainingProgress) -> EpochStats:
        """Train and evaluate one epoch. ``self._partial`` (this rank's part of a mid-epoch
        checkpoint of this epoch, set by a resume) continues it after the steps it already
        trained; it is consumed here, so only the first epoch of a resume uses it."""
        partial, self._partial = self._partial, None
        self.train_sampler.set_epoch(epoch - 1)
        self.loader_generator.manual_seed(_epoch_seed(self.seed, epoch - 1))
        hooks = [cb.after_backward for cb in self.callbacks if hasattr(cb, "after_backward")]
        steps = len(self.train_loader)
        # Per-step values stay on the device as 0-dim tensors: no sync, no indexing kernels.
        losses: list[torch.Tensor] = []
        corrects: list[torch.Tensor] = []
        batch_sizes: list[int] = []
        watch = NonFiniteWatch(steps, self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.net.train()
        bar.begin_epoch(epoch, steps)
        batches = iter(self.train_loader)
        done, earlier_seconds = 0, 0.0
        if partial is not None:
            # Replay the loader to where the checkpoint stood (sampler position, worker RNG
            # streams, and any main-process augmentation RNG it consumes), THEN put back the
            # RNG states of that step: the next batch and dropout draw what they drew then.
            done = partial["step"]
            for _ in range(done):
                next(batches)
                bar.advance()
            restore_rng_state(partial["rng"])
            losses = [v.to(self.device) for v in partial["losses"].unbind()]
            corrects = [v.to(self.device) for v in partial["corrects"].unbind()]
            batch_sizes = list(partial["batch_sizes"])
            earlier_seconds = float(partial["seconds"])
            watch.folded = done  # those losses were checked finite before they were saved
        every = parse_checkpoint_every(self.cfg.checkpoint_every)
        can_save = self.checkpoint_path is not None
        last_save = time.monotonic()
        start = time.perf_counter() - earlier_seconds
        self.energy.start()
        for step, batch in enumerate(batches, start=done):
            images, labels = self._to_device(*batch)
            with self.precision.autocast():
                logits = self.net(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            for hook in hooks:
                hook(self.model)
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            losses.append(loss.detach())
            corrects.append((logits.detach().argmax(dim=1) == labels).sum())
            batch_sizes.append(labels.numel())
            bar.advance()
            if (step + 1) % _HEALTH_EVERY == 0:
                self._raise_if_nonfinite(watch.poll(losses), epoch, steps)
                if bar.live:
                    bar.show_metrics(
                        float(torch.stack(losses[-_HEALTH_EVERY:]).mean()),
                        float(torch.stack(corrects[-_HEALTH_EVERY:]).sum())
                        / sum(batch_sizes[-_HEALTH_EVERY:]),
                        sum(batch_sizes) / (time.perf_counter() - start),
                    )
            if not can_save or step + 1 == steps:
                continue  # the end-of-epoch checkpoint follows (and handles a late signal)
            signum, clock_due = self._agree(step, every, last_save)
            if signum or clock_due or (every.steps and (step + 1) % every.steps == 0):
                self._raise_if_nonfinite(watch.finish(losses), epoch, steps)
                self._save_partial(epoch, step + 1, steps, losses, corrects, batch_sizes, start)
                last_save = time.monotonic()
                if signum:
                    # A rank that was not signalled itself names the signal the ranks agreed on.
                    self._signals.signum = self._signals.signum or signum
                    raise self._preempted(
                        f"at {self.phase} epoch {epoch}, step {step + 1} of {steps}"
                    )
        self._raise_if_nonfinite(watch.finish(losses), epoch, steps)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the energy of queued kernels belongs here
        rank_joules = self.energy.stop()
        sizes = torch.tensor(batch_sizes, dtype=torch.float64, device=self.device)
        # A resumed epoch's meter saw only its second part: "not measured", not a part.
        uncovered = not self._energy_covered or partial is not None
        energy = [rank_joules or 0.0, float(uncovered), float(self.energy.measured)]
        totals = torch.cat(
            [
                torch.stack(
                    [
                        (torch.stack(losses).double() * sizes).sum(),
                        torch.stack(corrects).sum().double(),
                        sizes.sum(),
                    ]
                ),
                torch.tensor(energy, dtype=torch.float64, device=self.device),
            ]
        )
        loss_sum, correct, samples, joules, uncovered, metered = distributed.all_reduce_sum(
            totals
        ).tolist()
        seconds = time.perf_counter() - start

        distributed.average_buffers(self.model)
        test = self.evaluate()
        self.scheduler.step()
        if self.ledger is not None:
            self.ledger.add(
                self.phase,
                macs_per_sample=self.macs_per_sample,
                samples=int(samples),
                seconds=seconds,
                joules=joules if metered and not uncovered else None,
            )
        return EpochStats(
            phase=self.phase,
            epoch=epoch,
            lr=lr,
            train_loss=loss_sum / samples,
            train_top1=correct / samples,
            test_loss=test["loss"],
            test_top1=test["top1"],
            test_top5=test["top5"],
            seconds=seconds,
            images_per_s=samples / seconds,
            samples=int(samples),
        )

    def _log_skipped_images(self, epoch: int) -> None:
        """One line when the epoch skipped unreadable images (``data.skip_bad_images``)."""
        new = [path for path in skipped_images(self.data) if path not in self._skipped_images]
        if new:
            self._skipped_images.update(new)
            log(
                f"{self.phase} epoch {epoch}: skipped {len(new)} unreadable image(s), e.g. "
                f"{new[0]} ({len(self._skipped_images)} so far); remove or replace them"
            )

    def _raise_if_nonfinite(self, step: int | None, epoch: int, steps: int) -> None:
        """UserError naming the first step (0-based ``step``) whose loss was NaN/inf."""
        if step is None:
            return
        kept = (
            f"the last good checkpoint (epoch {self._saved_epoch}) is kept in "
            f"{self.checkpoint_path.parent}; "
            if self._saved_epoch is not None
            else ""
        )
        raise DivergenceError(
            f"phase {self.phase!r}: the training loss became NaN/inf at epoch {epoch}, "
            f"step {step + 1} of {steps}; {kept}lower the learning rate and continue with "
            "`--resume --set train.lr=...`"
        )

    def _ask_callbacks_to_stop(self, epoch: int, stats: EpochStats) -> tuple[bool, bool]:
        """(a callback stops the phase, a signal asks to stop the run), agreed by all ranks."""
        votes = [
            cb.end_of_epoch(epoch, stats) for cb in self.callbacks if hasattr(cb, "end_of_epoch")
        ]
        # Every rank must leave the loop together, so one rank's stop stops all.
        flags = torch.tensor([float(any(votes)), float(self._signals.signum)], device=self.device)
        stop, signalled = (distributed.all_reduce_sum(flags) > 0).tolist()
        return bool(stop), bool(signalled)

    def _agree(self, step: int, every: CheckpointEvery, last_save: float) -> tuple[int, bool]:
        """(signal number or 0, the clock says checkpoint), the same on every rank.

        Alone, the local flag is read every step (free). Under DDP the ranks agree every
        ``_AGREE_EVERY`` steps and at every step-count checkpoint (see ``_AGREE_EVERY``).
        """
        signum = self._signals.signum
        clock_due = bool(every.seconds) and time.monotonic() - last_save >= every.seconds
        if not distributed.is_initialized():
            return signum, clock_due
        counted = bool(every.steps) and (step + 1) % every.steps == 0
        if (step + 1) % _AGREE_EVERY and not counted:
            return 0, False
        # all_reduce_min of negated values: the largest signal number and any rank's clock.
        flags = torch.tensor([-float(signum), -float(clock_due)], device=self.device)
        low_signum, low_due = distributed.all_reduce_min(flags).tolist()
        return int(-low_signum), low_due < 0

    def _preempted(self, where: str) -> Preempted:
        saved = f"checkpoint saved in {self.checkpoint_path.parent}"
        return Preempted(
            f"stopped by {self._signals.name} {where}; {saved}; continue with --resume"
        )

    def _restore_batchnorms(self) -> None:
        """Put the model's own BatchNorm modules back in place of their SyncBatchNorm copies."""
        for name, module in self._plain_batchnorms.items():
            module.train(self.model.get_submodule(name).training)
            self.model.set_submodule(name, module)
        self._plain_batchnorms = {}

    # ------------------------------------------------------------------------- persistence

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """Rank 0's newest checkpoint, on every rank: only rank 0 writes checkpoints, and the
        other machines of a multi-node run need not see its disk."""
        state = load_checkpoint(self.checkpoint_path) if distributed.is_main() else None
        return distributed.broadcast_object(state)

    def _record(self, stats: EpochStats, finished: bool) -> None:
        """Append the epoch to metrics.jsonl, then checkpoint (rank 0 only)."""
        if self.run_dir is None or not distributed.is_main():
            return
        append_entry(self.metrics_path, stats.to_dict())
        save_checkpoint(self._state(finished), self.checkpoint_path)
        self._saved_epoch = stats.epoch

    def _save_partial(
        self,
        epoch: int,
        step: int,
        steps: int,
        losses: list[torch.Tensor],
        corrects: list[torch.Tensor],
        batch_sizes: list[int],
        start: float,
    ) -> None:
        """A checkpoint after ``step`` of ``steps`` steps of ``epoch`` (collective under DDP;
        rank 0 writes). BatchNorm buffers need no per-rank copy: DDP broadcasts rank 0's at
        every forward, so the other ranks' mid-epoch buffers never reach the result."""
        mine = {
            "losses": torch.stack(losses).cpu(),
            "corrects": torch.stack(corrects).cpu(),
            "batch_sizes": list(batch_sizes),
            "seconds": time.perf_counter() - start,
            "rng": capture_rng_state(),
        }
        ranks = [mine]
        if distributed.is_initialized():
            ranks = [None] * distributed.world_size()
            torch.distributed.all_gather_object(ranks, mine)
        if not distributed.is_main():
            return
        state = self._state(finished=False)
        state["partial"] = {"epoch": epoch, "step": step, "steps": steps, "ranks": ranks}
        save_checkpoint(state, self.checkpoint_path)

    def _partial_for_this_rank(self, partial: dict[str, Any] | None) -> dict[str, Any] | None:
        """This rank's part of a mid-epoch checkpoint; UserError where it cannot continue."""
        if partial is None:
            return None
        where, saved_world = self.checkpoint_path, len(partial["ranks"])
        if saved_world != distributed.world_size():
            raise UserError(
                f"checkpoint {where} stopped inside epoch {partial['epoch']} with "
                f"{saved_world} process(es); resume with {saved_world} (torchrun "
                f"--nproc_per_node={saved_world}) to continue it exactly"
            )
        if partial["steps"] != len(self.train_loader):
            raise UserError(
                f"checkpoint {where} stopped at step {partial['step']} of {partial['steps']} "
                f"of epoch {partial['epoch']}, but an epoch now has {len(self.train_loader)} "
                "steps; resume with the batch size and data it was written with"
            )
        return {**partial["ranks"][distributed.rank()], "step": partial["step"]}

    def _state(self, finished: bool) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "phase": self.phase,
            "start_epoch": self.start_epoch,
            "epoch": self.last_epoch,
            "finished": finished,
            "stopped_early": self.stopped_early,
            "base_lr": self.base_lr,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "precision": self.precision.state_dict(),
            "rng": capture_rng_state(),
            "ledger": None if self.ledger is None else self.ledger.to_dict(),
            "callbacks": [
                cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks
            ],
            "history": [stats.to_dict() for stats in self.history],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        where = self.checkpoint_path
        if state.get("format") != CHECKPOINT_FORMAT or state.get("phase") != self.phase:
            raise UserError(f"checkpoint {where} is not a phase-{self.phase!r} checkpoint")
        if state["start_epoch"] != self.start_epoch:
            raise UserError(
                f"checkpoint {where} continues a schedule from epoch {state['start_epoch']}, "
                f"not {self.start_epoch}; delete it to restart the phase"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise UserError(f"checkpoint {where} does not fit this model ({first})") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["base_lr"] != self.base_lr:
            rebase_lr(self.scheduler, self.base_lr)
            log(
                f"{self.phase}: base lr changed from {state['base_lr']:g} to {self.base_lr:g} "
                "on resume"
            )
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state.get("precision"):
            self.precision.load_state_dict(state["precision"])
        restore_rng_state(state["rng"])
        if self.ledger is not None and state["ledger"] is not None:
            self.ledger.restore(state["ledger"])
        for callback, saved in zip(self.callbacks, state["callbacks"], strict=False):
            if saved is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(saved)
        self.history = [EpochStats.from_dict(entry) for entry in state["history"]]
        self.last_epoch = self._saved_epoch = state["epoch"]
        self.stopped_early = state["stopped_early"]
        if distributed.is_main() and self.metrics_path is not None:
            truncate_phase(self.metrics_path, self.phase, keep_through=self.last_epoch)

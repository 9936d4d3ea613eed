"""One epoch of a phase: the training steps with their stop and checkpoint points, then
evaluation.

Per-step losses and hits stay on the device as 0-dim tensors (no host sync per step) and are
summed over ranks at the end of the epoch, so metrics are exact means over all samples. After
every step the loop may stop: a NaN/inf loss (checked every ``_HEALTH_EVERY`` steps without
stalling the device, :mod:`ebcompress.engine.divergence`), a mid-epoch checkpoint that is due
(``checkpoint_every``), or SIGTERM / SIGINT, which save a checkpoint and raise
:class:`~ebcompress.engine.preemption.Preempted`.

An epoch resumed from a mid-epoch checkpoint fetches and discards the batches already
trained (replaying the sampler and the workers' own RNG streams), then restores the RNG
states saved at that step, so the rest of the epoch draws what an uninterrupted run draws.
Its energy is not measured (None), never a part passed off as the whole.

With an EMA of the weights (``config.ema``) the average is updated after every optimiser step
(its step count is the phase's step, a function of epoch and step, so a resume needs no
counter) and evaluated after the live model; the callbacks only ever see the live model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ebcompress.cost.energy import EnergyMeter
from ebcompress.cost.flops import TrainingLedger
from ebcompress.engine import distributed
from ebcompress.engine.checkpoint import capture_rng_state, restore_rng_state
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.distill import Distillation
from ebcompress.engine.divergence import NonFiniteWatch
from ebcompress.engine.loaders import Loaders
from ebcompress.engine.phase_files import PhaseFiles
from ebcompress.engine.preemption import StopSignals
from ebcompress.engine.prepare import Prepared, energy_counters
from ebcompress.engine.progress import TrainingProgress
from ebcompress.engine.state import PartialEpoch, RankProgress
from ebcompress.engine.stats import Callback, EpochStats

_HEALTH_EVERY = 32  # steps between checks for a non-finite loss (and live-bar updates)
# Under DDP the ranks agree on "stop now" / "checkpoint now (by the clock)" with one 2-value
# all-reduce every this many steps. Its .tolist() waits for the device, so doing it every
# step would stop the host queueing kernels ahead; every 8 steps that stall is amortised,
# and a SIGTERM waits at most 7 more steps (well inside a scheduler's grace period). Step
# counts (checkpoint_every: N steps) need no agreement: every rank counts the same steps.
_AGREE_EVERY = 8


class EpochLoop:
    """Trains and evaluates epochs of ``config``'s phase on ``prepared``'s model.

    ``save_partial`` is called on rank 0 with a mid-epoch checkpoint's :class:`PartialEpoch`
    (the trainer adds the rest of its state); ``files`` names the checkpoint in messages.
    ``ledger`` (None: no cost booked) receives each epoch's training cost and joules.
    ``distill`` (None: none) adds its teacher's soft targets to the training loss, and its
    teacher's forward MACs to the ledger.
    """

    def __init__(
        self,
        prepared: Prepared,
        loaders: Loaders,
        config: TrainerConfig,
        *,
        num_classes: int,
        callbacks: Sequence[Callback],
        ledger: TrainingLedger | None,
        files: PhaseFiles,
        save_partial: Callable[[PartialEpoch], None],
        distill: Distillation | None = None,
    ) -> None:
        self.prepared, self.loaders, self.config = prepared, loaders, config
        self.distill = distill
        self.num_classes, self.callbacks = num_classes, callbacks
        self.ledger, self.files, self.save_partial = ledger, files, save_partial
        counters, self.energy_covered = energy_counters(config, prepared.device)
        self.energy = EnergyMeter(counters)

    def _to_device(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.prepared.device
        images = images.to(device, non_blocking=True, memory_format=self.prepared.memory_format)
        return images, labels.to(device, non_blocking=True)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Exact test metrics of ``model`` (default: the live model): ``{"loss", "top1",
        "top5", "samples"}`` (sums over all ranks / n).

        top-5 is top-min(5, num_classes).
        """
        model = self.prepared.model if model is None else model
        precision = self.prepared.precision
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.prepared.device)
        k = min(5, self.num_classes)
        with precision.autocast():
            for batch in self.loaders.test:
                images, labels = self._to_device(*batch)
                logits = model(images).float()
                hits = logits.topk(k, dim=1).indices == labels[:, None]
                totals[0] += F.cross_entropy(logits, labels, reduction="sum")
                totals[1] += hits[:, 0].sum()
                totals[2] += hits.any(dim=1).sum()
                totals[3] += labels.numel()
        model.train(was_training)
        loss, top1, top5, n = distributed.all_reduce_sum(totals).tolist()
        n_safe = max(n, 1.0)
        return {
            "loss": loss / n_safe,
            "top1": top1 / n_safe,
            "top5": top5 / n_safe,
            "samples": int(n),
        }

    def run(
        self,
        epoch: int,
        bar: TrainingProgress,
        signals: StopSignals,
        partial: PartialEpoch | None = None,
    ) -> EpochStats:
        """Train and evaluate 1-based ``epoch``; ``partial`` (a mid-epoch checkpoint of this
        epoch) continues it after the steps it already trained."""
        p, config = self.prepared, self.config
        hooks = [cb.after_backward for cb in self.callbacks if hasattr(cb, "after_backward")]
        steps = self.loaders.steps
        # Per-step values stay on the device as 0-dim tensors: no sync, no indexing kernels.
        losses: list[torch.Tensor] = []
        corrects: list[torch.Tensor] = []
        batch_sizes: list[int] = []
        watch = NonFiniteWatch(steps, p.device)
        lr = p.optimizer.param_groups[0]["lr"]
        p.net.train()
        bar.begin_epoch(epoch, steps)
        batches = self.loaders.epoch(epoch)
        done, earlier_seconds = 0, 0.0
        if partial is not None:
            # Replay the loader to where the checkpoint stood (sampler position, worker RNG
            # streams, and any main-process augmentation RNG it consumes), THEN put back the
            # RNG states of that step: the next batch and dropout draw what they drew then.
            mine = partial.ranks[distributed.rank()]
            done = partial.step
            for _ in range(done):
                next(batches)
                bar.advance()
            restore_rng_state(mine.rng)
            losses = [v.to(p.device) for v in mine.losses.unbind()]
            corrects = [v.to(p.device) for v in mine.corrects.unbind()]
            batch_sizes = list(mine.batch_sizes)
            earlier_seconds = mine.seconds
            watch.folded = done  # those losses were checked finite before they were saved
        every = config.checkpoint_every
        can_save = self.files.enabled
        last_save = time.monotonic()
        start = time.perf_counter() - earlier_seconds
        self.energy.start()
        for step, batch in enumerate(batches, start=done):
            images, labels = self._to_device(*batch)
            with p.precision.autocast():
                logits = p.net(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
                if self.distill is not None:
                    loss = self.distill.loss(images, logits, loss)
            p.optimizer.zero_grad(set_to_none=True)
            if p.scaler is None:
                loss.backward()
            else:
                p.scaler.scale(loss).backward()
                p.scaler.unscale_(p.optimizer)
            for hook in hooks:
                hook(p.model)
            if p.scaler is None:
                p.optimizer.step()
            else:
                p.scaler.step(p.optimizer)
                p.scaler.update()
            if p.ema is not None:
                # The phase's 1-based step: the first update copies the live weights.
                p.ema.update(p.model, step=(epoch - 1 - config.start_epoch) * steps + step + 1)
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
            signum, clock_due = self._agree(signals, step, last_save)
            if signum or clock_due or (every.steps and (step + 1) % every.steps == 0):
                self._raise_if_nonfinite(watch.finish(losses), epoch, steps)
                progress = RankProgress(
                    losses=torch.stack(losses).cpu(),
                    corrects=torch.stack(corrects).cpu(),
                    batch_sizes=list(batch_sizes),
                    seconds=time.perf_counter() - start,
                    rng=capture_rng_state(),
                )
                self._save_partial(PartialEpoch(epoch, step + 1, steps, [progress]))
                last_save = time.monotonic()
                if signum:
                    # A rank that was not signalled itself names the signal the ranks agreed on.
                    signals.signum = signals.signum or signum
                    where = f"at {config.phase} epoch {epoch}, step {step + 1} of {steps}"
                    raise self.files.stopped(signals.name, where)
        self._raise_if_nonfinite(watch.finish(losses), epoch, steps)
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)  # the energy of queued kernels belongs here
        rank_joules = self.energy.stop()
        sizes = torch.tensor(batch_sizes, dtype=torch.float64, device=p.device)
        # A resumed epoch's meter saw only its second part: "not measured", not a part.
        uncovered = not self.energy_covered or partial is not None
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
                torch.tensor(energy, dtype=torch.float64, device=p.device),
            ]
        )
        loss_sum, correct, samples, joules, uncovered, metered = distributed.all_reduce_sum(
            totals
        ).tolist()
        seconds = time.perf_counter() - start

        distributed.average_buffers(p.model)
        test = self.evaluate()
        ema_top1 = None
        if p.ema is not None:
            # Each rank averaged its own BatchNorm statistics into its EMA: make them agree.
            distributed.average_buffers(p.ema.module)
            # Iterating the test loader draws its base seed from the global RNG: put that
            # back, so the live training draws what it draws without an EMA.
            rng = capture_rng_state()
            ema_top1 = self.evaluate(p.ema.module)["top1"]
            restore_rng_state(rng)
        p.scheduler.step()
        if self.ledger is not None:
            self.ledger.add(
                config.phase,
                macs_per_sample=config.macs_per_sample,
                teacher_macs_per_sample=(self.distill and self.distill.macs_per_sample) or 0,
                samples=int(samples),
                seconds=seconds,
                joules=joules if metered and not uncovered else None,
            )
        return EpochStats(
            phase=config.phase,
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
            ema_test_top1=ema_top1,
        )

    def stop_meter(self) -> None:
        """Stop the energy meter if an epoch that raised left it running."""
        if self.energy.running:
            self.energy.stop()

    def _save_partial(self, partial: PartialEpoch) -> None:
        """Gather every rank's progress into ``partial`` (collective under DDP) and hand it
        to ``save_partial`` on rank 0. BatchNorm buffers need no per-rank copy: DDP
        broadcasts rank 0's at every forward, so the other ranks' mid-epoch buffers never
        reach the result."""
        if distributed.is_initialized():
            ranks: list[RankProgress | None] = [None] * distributed.world_size()
            torch.distributed.all_gather_object(ranks, partial.ranks[0])
            partial.ranks = ranks
        if distributed.is_main():
            self.save_partial(partial)

    def _raise_if_nonfinite(self, step: int | None, epoch: int, steps: int) -> None:
        """DivergenceError naming the first step (0-based ``step``) whose loss was NaN/inf."""
        if step is not None:
            raise self.files.diverged(epoch, step, steps)

    def _agree(self, signals: StopSignals, step: int, last_save: float) -> tuple[int, bool]:
        """(signal number or 0, the clock says checkpoint), the same on every rank.

        Alone, the local flag is read every step (free). Under DDP the ranks agree every
        ``_AGREE_EVERY`` steps and at every step-count checkpoint (see ``_AGREE_EVERY``).
        """
        every = self.config.checkpoint_every
        signum = signals.signum
        clock_due = bool(every.seconds) and time.monotonic() - last_save >= every.seconds
        if not distributed.is_initialized():
            return signum, clock_due
        counted = bool(every.steps) and (step + 1) % every.steps == 0
        if (step + 1) % _AGREE_EVERY and not counted:
            return 0, False
        # all_reduce_min of negated values: the largest signal number and any rank's clock.
        flags = torch.tensor([-float(signum), -float(clock_due)], device=self.prepared.device)
        low_signum, low_due = distributed.all_reduce_min(flags).tolist()
        return int(-low_signum), low_due < 0

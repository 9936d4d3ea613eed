"""Forward MACs of a model and the training-FLOPs ledger.

Units (see docs/architecture.md): fvcore counts one multiply-add as one "flop"; we call that a
**MAC** and report **FLOPs = 2 x MACs**. Training one sample costs
``TRAIN_FLOPS_PER_FORWARD_FLOP = 3`` forward passes' worth of FLOPs (forward + backward), the
convention of You et al. (ICLR 2020, "Drawing Early-Bird Tickets", Sec. 4 and Figs. 2, 5). A
phase's training FLOPs are therefore ``3 x 2 x MACs(model as trained in that phase) x samples``,
with samples summed over the phase's epochs; :func:`training_flops` is the one place that formula
lives. The EB search phase trains the dense model; retraining trains the slim one.

fvcore counts convolutions, linear layers and matrix products as MACs and also counts
batch-norm, adaptive average pooling and upsampling element-wise; it ignores activations,
additions and max pooling. Those conventions are kept as they are, so numbers match fvcore's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ebcompress.checks import check_int, check_module, check_runs
from ebcompress.errors import UserError
from ebcompress.modules import unwrap

TRAIN_FLOPS_PER_FORWARD_FLOP = 3
"""Training FLOPs per forward FLOP: forward + backward (twice the forward), the paper's rule."""

FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class FlopCount:
    """Forward cost of one sample through a model, as fvcore counts it.

    ``macs`` are multiply-accumulates for ONE sample; ``params`` counts every parameter,
    trainable and frozen (buffers such as BN running statistics are not parameters).
    """

    macs: int
    params: int

    @property
    def flops(self) -> int:
        """Forward FLOPs for one sample: 2 x MACs."""
        return FLOPS_PER_MAC * self.macs

    def to_dict(self) -> dict[str, int]:
        """JSON-safe: ``{"macs", "flops", "params"}``."""
        return {"macs": self.macs, "flops": self.flops, "params": self.params}


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _example_batch(
    model: nn.Module, input_size: Sequence[int] | torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The batch to trace, once the model runs it (a UserError naming ``input_size`` if not)."""
    if isinstance(input_size, torch.Tensor):
        if input_size.dim() < 1 or input_size.shape[0] < 1:
            raise UserError(
                f"count_flops: input_size, a tensor of shape {tuple(input_size.shape)}, has no "
                "batch; pass a batch (N, C, H, W) or a per-sample size (C, H, W)"
            )
        batch = input_size.to(device)
        check_runs(model, batch, "count_flops: input_size, an example batch")
        return batch
    if isinstance(input_size, (str, bytes)) or not isinstance(input_size, Sequence):
        raise TypeError(
            "count_flops: input_size must be one sample's shape such as (3, 32, 32) or an "
            f"example batch tensor, got {type(input_size).__name__}"
        )
    size = tuple(check_int(s, "count_flops: each input_size entry") for s in input_size)
    if not size or any(s < 1 for s in size):
        raise UserError(
            f"count_flops: input_size {size} must be one sample's positive sizes, e.g. (3, 32, 32)"
        )
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dtype = floating[0] if floating else torch.get_default_dtype()
    # Two samples, so BatchNorm traced in training mode sees more than one value per channel.
    batch = torch.zeros((2, *size), dtype=dtype, device=device)
    check_runs(
        model,
        batch,
        f"count_flops: a zero batch of input_size {size}",
        fix="input_size is one sample's shape without the batch axis, e.g. (3, 32, 32)",
    )
    return batch


def count_flops(
    model: nn.Module,
    input_size: Sequence[int] | torch.Tensor,
    *,
    device: str | torch.device | None = None,
    training: bool = True,
) -> FlopCount:
    """Forward MACs per sample and parameter count of ``model``, measured with fvcore.

    ``input_size`` is one sample's shape ``(C, H, W)`` (a zero batch of two is traced), or an
    example input batch, whose MACs are divided by its batch size. The example input is placed on
    ``device`` (default: where the model's parameters are); the model itself is not moved.

    ``training=True`` (the default) counts the forward pass as it runs during training, which
    is what the training-FLOPs ledger multiplies: fvcore then counts BatchNorm as 5 ops per
    element instead of 2 in eval mode (vgg16_cifar at 3x32x32: 314.6 M vs 313.8 M MACs). The
    buffers BN updates while traced (running statistics) are restored afterwards. A batch of
    one sample that BatchNorm in training mode rejects (a 1x1 feature map gives it one value
    per channel) is counted as that sample twice, divided by 2: the same per-sample MACs, since
    fvcore's counts grow with the batch size; any other batch is counted as given.
    Tracing runs under ``torch.no_grad()`` and every submodule's train/eval flag is restored
    afterwards, also on error. An ``input_size`` the model does not run (checked with one
    eval-mode sample first) is a UserError naming it, and a wrong type a TypeError. DDP,
    DataParallel and torch.compile wrappers are unwrapped. fvcore's warnings about unsupported
    ops and modules that were never called are silenced: fvcore's convention is to skip them.
    ``params`` counts trainable and non-trainable parameters alike.
    """
    module = unwrap(check_module(model, "count_flops: model"))
    try:
        target = torch.device(device) if device is not None else _model_device(module)
    except (RuntimeError, TypeError):
        raise UserError(
            f"count_flops: device {device!r} is not a torch device (e.g. 'cpu', 'cuda:0')"
        ) from None
    batch = _example_batch(module, input_size, target)
    modes = {sub: sub.training for sub in module.modules()}
    buffers = {name: buf.detach().clone() for name, buf in module.named_buffers()}
    try:
        module.train(training)
        with torch.no_grad(), warnings.catch_warnings():
            # jit tracing warns about data-dependent control flow in many timm models; the count
            # is what we want, the trace is thrown away.
            warnings.simplefilter("ignore")
            try:
                total = _traced_total(module, batch)
            except ValueError as exc:
                if not (training and batch.shape[0] == 1 and _BN_NEEDS_TWO in str(exc)):
                    raise
                # BatchNorm in training mode rejects a batch of one sample when it sees a 1x1
                # map (one value per channel). fvcore counts every op from its shapes, and the
                # per-sample work of conv, matmul, BN and pooling scales with the batch size,
                # so the sample repeated twice, divided by 2 below, is that sample's count.
                # Only on this failure: the few ops that run once per forward whatever the
                # batch (NFNet's weight standardisation, relative-position MLPs) would count
                # half, so a batch of one that runs keeps the count it always had.
                batch = torch.cat([batch, batch])
                total = _traced_total(module, batch)
    finally:
        for sub, was_training in modes.items():
            sub.training = was_training
        with torch.no_grad():
            for name, buf in module.named_buffers():
                buf.copy_(buffers[name])
    params = sum(p.numel() for p in module.parameters())
    return FlopCount(macs=round(total / batch.shape[0]), params=int(params))


# torch's message when BatchNorm in training mode sees one value per channel.
_BN_NEEDS_TWO = "Expected more than 1 value per channel when training"


def _traced_total(module: nn.Module, batch: torch.Tensor) -> float:
    """fvcore's total count for one traced forward of ``batch`` (its warnings off)."""
    # Imported here: importing fvcore.nn scripts a loss with the deprecated
    # torch.jit.script, which would warn on every import of this module.
    from fvcore.nn import FlopCountAnalysis

    analysis = (
        FlopCountAnalysis(module, batch)
        .unsupported_ops_warnings(False)
        .uncalled_modules_warnings(False)
        .tracer_warnings("none")
    )
    return analysis.total()


def training_flops(macs_per_sample: int, samples: int, epochs: int = 1) -> int:
    """Training FLOPs: 3 x 2 x ``macs_per_sample`` x ``samples`` (per epoch) x ``epochs``."""
    return TRAIN_FLOPS_PER_FORWARD_FLOP * FLOPS_PER_MAC * macs_per_sample * samples * epochs


@dataclass
class PhaseCost:
    """Accumulated cost of one training phase.

    ``samples`` is the total number of samples trained on, summed over the phase's ``epochs``;
    ``joules`` is measured energy, or None when any part of the phase was not measured.
    ``teacher_macs_per_sample`` is a distillation teacher's forward MACs (0: none): it runs
    one forward per trained sample and no backward.
    """

    phase: str
    macs_per_sample: int
    samples: int
    epochs: int
    seconds: float
    joules: float | None
    teacher_macs_per_sample: int = 0

    @property
    def training_flops(self) -> int:
        """3 x 2 x macs_per_sample x samples (samples already summed over epochs), plus the
        teacher's 2 x teacher_macs_per_sample x samples."""
        return training_flops(self.macs_per_sample, self.samples) + self.teacher_flops

    @property
    def teacher_flops(self) -> int:
        """The part of :attr:`training_flops` that is the teacher's forward passes."""
        return FLOPS_PER_MAC * self.teacher_macs_per_sample * self.samples

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields plus the derived ``training_flops``."""
        return {
            "phase": self.phase,
            "macs_per_sample": self.macs_per_sample,
            "samples": self.samples,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "joules": self.joules,
            "training_flops": self.training_flops,
            **(
                {"teacher_macs_per_sample": self.teacher_macs_per_sample}
                if self.teacher_macs_per_sample
                else {}  # a phase without a teacher keeps the layout of earlier files
            ),
        }


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"TrainingLedger: {name} must be a non-negative int, got {value!r}")


def _check_amount(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"TrainingLedger: {name} must be a finite number >= 0, got {value!r}")


class TrainingLedger:
    """Training FLOPs (and wall time / measured energy) per phase, e.g. 'search', 'retrain'.

    Each :meth:`add` accumulates into its phase; a phase keeps one ``macs_per_sample`` (the
    model trained in it), and adding with a different one is a ValueError: a model that changes
    shape starts a new phase. Phases keep the order of their first :meth:`add`.
    """

    def __init__(self) -> None:
        self._phases: dict[str, PhaseCost] = {}

    def add(
        self,
        phase: str,
        *,
        macs_per_sample: int,
        samples: int,
        epochs: int = 1,
        seconds: float = 0.0,
        joules: float | None = None,
        teacher_macs_per_sample: int = 0,
    ) -> None:
        """Record ``epochs`` epochs of ``samples`` samples EACH (per epoch) trained in ``phase``.

        ``seconds`` and ``joules`` are the wall time and measured energy of those epochs;
        ``joules=None`` means not measured and makes the phase's energy unknown.
        ``teacher_macs_per_sample``: a distillation teacher's forward MACs per sample (one
        forward, no backward); a phase keeps one, like ``macs_per_sample``.
        """
        if not isinstance(phase, str) or not phase:
            raise ValueError(f"TrainingLedger.add: phase must be a non-empty str, got {phase!r}")
        _check_count("macs_per_sample", macs_per_sample)
        _check_count("samples", samples)
        _check_count("epochs", epochs)
        _check_count("teacher_macs_per_sample", teacher_macs_per_sample)
        _check_amount("seconds", seconds)
        if joules is not None:
            _check_amount("joules", joules)
        cost = self._phases.get(phase)
        if cost is None:
            self._phases[phase] = PhaseCost(
                phase,
                macs_per_sample,
                samples * epochs,
                epochs,
                float(seconds),
                _joules(joules),
                teacher_macs_per_sample,
            )
            return
        if (cost.macs_per_sample, cost.teacher_macs_per_sample) != (
            macs_per_sample,
            teacher_macs_per_sample,
        ):
            raise ValueError(
                f"TrainingLedger.add: phase {phase!r} was recorded at {cost.macs_per_sample} MACs "
                f"per sample (teacher {cost.teacher_macs_per_sample}), now {macs_per_sample} "
                f"(teacher {teacher_macs_per_sample}); record a changed model as a new phase"
            )
        cost.samples += samples * epochs
        cost.epochs += epochs
        cost.seconds += float(seconds)
        cost.joules = None if cost.joules is None or joules is None else cost.joules + joules

    @property
    def phases(self) -> dict[str, PhaseCost]:
        """Phase name -> accumulated cost, in order of first add (a copy of the mapping)."""
        return dict(self._phases)

    @property
    def total_flops(self) -> int:
        return sum(cost.training_flops for cost in self._phases.values())

    @property
    def total_seconds(self) -> float:
        return sum(cost.seconds for cost in self._phases.values())

    @property
    def total_joules(self) -> float | None:
        """Summed measured energy; None if the ledger is empty or any phase was not measured."""
        energies = [cost.joules for cost in self._phases.values()]
        if not energies or any(j is None for j in energies):
            return None
        return sum(energies)

    @staticmethod
    def dense_reference(macs_per_sample: int, samples_per_epoch: int, epochs: int) -> int:
        """FLOPs a full dense training costs (the baseline EB's savings are measured against)."""
        return training_flops(macs_per_sample, samples_per_epoch, epochs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``{"phases": [...], "total_flops", "total_seconds", "total_joules"}``."""
        return {
            "phases": [cost.to_dict() for cost in self._phases.values()],
            "total_flops": self.total_flops,
            "total_seconds": self.total_seconds,
            "total_joules": self.total_joules,
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace this ledger's phases with :meth:`to_dict` output, in place (the ledger
        object is shared by every phase of a run)."""
        vars(self).update(vars(type(self).from_dict(data)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingLedger:
        """Inverse of :meth:`to_dict` (derived totals are recomputed, not read)."""
        ledger = cls()
        try:
            for entry in data["phases"]:
                cost = PhaseCost(
                    phase=entry["phase"],
                    macs_per_sample=entry["macs_per_sample"],
                    samples=entry["samples"],
                    epochs=entry["epochs"],
                    seconds=float(entry["seconds"]),
                    joules=_joules(entry["joules"]),
                    teacher_macs_per_sample=entry.get("teacher_macs_per_sample", 0),
                )
                if not isinstance(cost.phase, str) or not cost.phase:
                    raise ValueError(f"phase name {cost.phase!r} is not a non-empty str")
                _check_count("macs_per_sample", cost.macs_per_sample)
                _check_count("samples", cost.samples)
                _check_count("epochs", cost.epochs)
                _check_count("teacher_macs_per_sample", cost.teacher_macs_per_sample)
                if cost.phase in ledger._phases:
                    raise ValueError(f"phase {cost.phase!r} appears twice")
                ledger._phases[cost.phase] = cost
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"training ledger: malformed entry ({err}); expected TrainingLedger.to_dict() data"
            ) from err
        return ledger


def _joules(value: float | None) -> float | None:
    return None if value is None else float(value)

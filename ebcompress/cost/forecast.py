"""A run's cost before it runs: per-epoch rates timed on this machine, and their check.

A :class:`Forecast` holds, for each phase of each method it covers, what ONE epoch of that
phase costs here (:class:`PhaseRate`): the forward MACs per sample and the samples per epoch,
which give the phase's training FLOPs exactly by the ledger's own formula
(:func:`~ebcompress.cost.flops.training_flops`), and the seconds (and joules, where a counter
measured them) of the epoch's training pass, of the evaluation after it and of the rest of
the epoch (callbacks such as Early-Bird's mask drawing, the checkpoint), timed on a few steps
of the real networks by :mod:`ebcompress.run.plan`. A phase of N epochs is then N times its
rate plus the extra of its first (warm-up) epoch.

How long Early-Bird searches is not known before its ticket emerges, so the forecast gives
its rate and a few :class:`Scenario` rows (emergence at 10 % and 20 % of the schedule, and
at ``prune.max_search_epochs``); :meth:`Forecast.check` compares a finished run's ledger with
the forecast at the epochs each phase actually ran. The retraining rate is timed on a slim
network of a stand-in ticket at the recipe's ratio: the run's own ticket is not known in
advance, so its MACs (and therefore the retraining FLOPs) are an estimate, marked
``macs_estimated``. A retraining that distils from a teacher (``retrain.distill``) is timed
with that teacher running, and its rate counts the teacher's forward FLOPs as the ledger
does (``teacher_macs_per_sample``).

This module imports only the core (the ledger's formula); a forecast is plain JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ebcompress.atomic import write_text_atomic
from ebcompress.cost.flops import FLOPS_PER_MAC, TrainingLedger, training_flops
from ebcompress.errors import UserError

FORMAT = 1


@dataclass(frozen=True)
class PhaseRate:
    """One epoch of one phase on the machine the forecast was made on.

    ``train_seconds`` is the epoch's training pass (what the ledger and the report's cost
    table call wall time), ``eval_seconds`` the test-set evaluation after it,
    ``other_seconds`` the rest of the epoch (callbacks, checkpoint, metrics line);
    ``first_train_extra`` / ``first_epoch_extra`` what the phase's first epoch costs more
    (warm-up), in its training pass / in all. ``joules`` is one training pass's measured
    energy, None where no counter measured it. ``macs_estimated``: the MACs are a stand-in
    ticket's slim network's, not the run's. ``cpu_share``: this process's CPU seconds per wall
    second while it was timed (up to its thread count; less when other work shared the
    cores), which says how loaded the machine was; None where not recorded.
    ``teacher_macs_per_sample``: a distillation teacher's forward MACs (0: none), one forward
    per trained sample, charged as the ledger's ``PhaseCost.teacher_flops``.
    """

    macs_per_sample: int
    samples_per_epoch: int
    train_seconds: float
    eval_seconds: float
    other_seconds: float
    first_train_extra: float = 0.0
    first_epoch_extra: float = 0.0
    joules: float | None = None
    macs_estimated: bool = False
    cpu_share: float | None = None
    teacher_macs_per_sample: int = 0

    def flops(self, epochs: int, macs_per_sample: int | None = None) -> int:
        """Training FLOPs of ``epochs`` epochs (the ledger's formula: the student's 3 x 2 x
        MACs x samples plus a teacher's 2 x MACs x samples), at this rate's MACs or at the
        student's ``macs_per_sample``."""
        macs = self.macs_per_sample if macs_per_sample is None else macs_per_sample
        samples = self.samples_per_epoch * epochs
        return (
            training_flops(macs, samples) + FLOPS_PER_MAC * self.teacher_macs_per_sample * samples
        )

    def train_time(self, epochs: int) -> float:
        """Seconds of the training passes of ``epochs`` epochs (the ledger's seconds)."""
        return epochs * self.train_seconds + (self.first_train_extra if epochs else 0.0)

    def wall_time(self, epochs: int) -> float:
        """Seconds of the whole phase: training, evaluation and the rest of every epoch."""
        per_epoch = self.train_seconds + self.eval_seconds + self.other_seconds
        return epochs * per_epoch + (self.first_epoch_extra if epochs else 0.0)

    def energy(self, epochs: int) -> float | None:
        """Joules of the training passes of ``epochs`` epochs; None when not measured."""
        return None if self.joules is None else epochs * self.joules


@dataclass(frozen=True)
class Scenario:
    """One way a method may run: its phases with their epochs, e.g. EB with a ticket at
    epoch 3 then 30 retraining epochs."""

    method: str
    label: str
    epochs: dict[str, int]


@dataclass(frozen=True)
class PhaseEstimate:
    """What a phase of some epochs is forecast to cost."""

    method: str
    label: str
    phase: str
    epochs: int
    flops: int
    train_seconds: float
    wall_seconds: float
    joules: float | None
    macs_estimated: bool


@dataclass(frozen=True)
class PhaseCheck:
    """A finished phase against its forecast at the epochs it ran; errors are
    (predicted - measured) / measured, None where either side is missing or zero. The FLOPs
    include a distillation teacher's forward passes on both sides; ``*_teacher_macs`` are
    its MACs per sample (0: none)."""

    phase: str
    epochs: int
    predicted_flops: int
    measured_flops: int
    predicted_macs: int
    measured_macs: int
    macs_estimated: bool
    predicted_train_seconds: float
    measured_train_seconds: float
    predicted_wall_seconds: float
    predicted_joules: float | None
    measured_joules: float | None
    predicted_teacher_macs: int = 0
    measured_teacher_macs: int = 0

    @property
    def flops_error(self) -> float | None:
        return relative_error(self.predicted_flops, self.measured_flops)

    @property
    def train_seconds_error(self) -> float | None:
        return relative_error(self.predicted_train_seconds, self.measured_train_seconds)

    @property
    def joules_error(self) -> float | None:
        return relative_error(self.predicted_joules, self.measured_joules)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "flops_error": self.flops_error,
            "train_seconds_error": self.train_seconds_error,
            "joules_error": self.joules_error,
        }


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured; None when either is None or measured is 0."""
    if predicted is None or measured is None or measured == 0:
        return None
    return (predicted - measured) / measured


@dataclass(frozen=True)
class Forecast:
    """Per-epoch rates of every phase of ``rates``' methods (``"dense"``: ``train``;
    ``"eb"`` and ``"ns"``: ``search``, ``retrain``), the scenarios shown for them, and where
    and how they were timed. ``method`` is the recipe's own ``prune.method``."""

    recipe: str
    method: str
    device: str
    machine: dict[str, Any]
    timed_steps: int
    rates: dict[str, dict[str, PhaseRate]]
    scenarios: tuple[Scenario, ...]
    setup_seconds: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def rate(self, method: str, phase: str) -> PhaseRate | None:
        return self.rates.get(method, {}).get(phase)

    def estimates(self) -> list[PhaseEstimate]:
        """Every scenario's phases, forecast (the ``ebcompress plan`` table)."""
        rows = []
        for scenario in self.scenarios:
            for phase, epochs in scenario.epochs.items():
                rate = self.rate(scenario.method, phase)
                if rate is None:
                    continue
                rows.append(
                    PhaseEstimate(
                        method=scenario.method,
                        label=scenario.label,
                        phase=phase,
                        epochs=epochs,
                        flops=rate.flops(epochs),
                        train_seconds=rate.train_time(epochs),
                        wall_seconds=rate.wall_time(epochs),
                        joules=rate.energy(epochs),
                        macs_estimated=rate.macs_estimated,
                    )
                )
        return rows

    def check(self, ledger: TrainingLedger, method: str | None = None) -> list[PhaseCheck]:
        """Each phase of a finished run's ``ledger`` against this forecast for ``method``
        (default: the recipe's) at the epochs the phase ran. Phases the forecast has no rate
        for are left out (a method it does not cover gives an empty list)."""
        rates = self.rates.get(method or self.method, {})
        checks = []
        for cost in ledger.phases.values():
            rate = rates.get(cost.phase)
            if rate is None:
                continue
            checks.append(
                PhaseCheck(
                    phase=cost.phase,
                    epochs=cost.epochs,
                    predicted_flops=rate.flops(cost.epochs),
                    measured_flops=cost.training_flops,
                    predicted_macs=rate.macs_per_sample,
                    measured_macs=cost.macs_per_sample,
                    macs_estimated=rate.macs_estimated,
                    predicted_train_seconds=rate.train_time(cost.epochs),
                    measured_train_seconds=cost.seconds,
                    predicted_wall_seconds=rate.wall_time(cost.epochs),
                    predicted_joules=rate.energy(cost.epochs),
                    measured_joules=cost.joules,
                    predicted_teacher_macs=rate.teacher_macs_per_sample,
                    measured_teacher_macs=cost.teacher_macs_per_sample,
                )
            )
        return checks

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; :meth:`from_dict` reads it back."""
        return {
            "format": FORMAT,
            "recipe": self.recipe,
            "method": self.method,
            "device": self.device,
            "machine": dict(self.machine),
            "timed_steps": self.timed_steps,
            "rates": {
                method: {phase: asdict(rate) for phase, rate in phases.items()}
                for method, phases in self.rates.items()
            },
            "scenarios": [asdict(s) for s in self.scenarios],
            "setup_seconds": dict(self.setup_seconds),
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "forecast") -> Forecast:
        """Inverse of :meth:`to_dict`; anything else is a one-line UserError naming ``where``."""
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            rates = {
                method: {phase: _rate(values) for phase, values in phases.items()}
                for method, phases in data["rates"].items()
            }
            scenarios = tuple(
                Scenario(s["method"], s["label"], {k: int(v) for k, v in s["epochs"].items()})
                for s in data["scenarios"]
            )
            return cls(
                recipe=str(data["recipe"]),
                method=str(data["method"]),
                device=str(data["device"]),
                machine=dict(data["machine"]),
                timed_steps=int(data["timed_steps"]),
                rates=rates,
                scenarios=scenarios,
                setup_seconds={k: float(v) for k, v in data.get("setup_seconds", {}).items()},
                notes=tuple(str(n) for n in data.get("notes", ())),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{where} is not an ebcompress forecast ({type(exc).__name__}: {exc}); "
                "write it again with `ebcompress plan --out FILE` or `ebcompress prune --plan`"
            ) from None

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Forecast:
        """Read a file :meth:`save` wrote (a UserError naming it otherwise)."""
        where = str(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read forecast {where!r} ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{where!r} is not an ebcompress forecast (not a JSON object)")
        return cls.from_dict(data, where=repr(where))


def _rate(values: Mapping[str, Any]) -> PhaseRate:
    rate = PhaseRate(
        macs_per_sample=int(values["macs_per_sample"]),
        samples_per_epoch=int(values["samples_per_epoch"]),
        train_seconds=float(values["train_seconds"]),
        eval_seconds=float(values["eval_seconds"]),
        other_seconds=float(values["other_seconds"]),
        first_train_extra=float(values.get("first_train_extra", 0.0)),
        first_epoch_extra=float(values.get("first_epoch_extra", 0.0)),
        joules=None if values.get("joules") is None else float(values["joules"]),
        macs_estimated=bool(values.get("macs_estimated", False)),
        cpu_share=None if values.get("cpu_share") is None else float(values["cpu_share"]),
        teacher_macs_per_sample=int(values.get("teacher_macs_per_sample", 0)),  # older: none
    )
    seconds = (rate.train_seconds, rate.eval_seconds, rate.other_seconds)
    if min(rate.macs_per_sample, rate.samples_per_epoch, rate.teacher_macs_per_sample) < 0:
        raise ValueError("negative MACs or samples")
    if not all(math.isfinite(s) and s >= 0 for s in seconds):
        raise ValueError(f"seconds {seconds} must be finite and >= 0")
    return rate

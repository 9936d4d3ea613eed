"""What a finished run measured: :class:`RunResults`, stored in ``state.json``.

The pipeline builds it at the end of a run; :mod:`ebcompress.run.state` stores it with
:meth:`RunResults.to_dict` and reads it back with :meth:`RunResults.from_dict`; the report,
the health verdict, the plots, compare and the CLI read it by attribute. ``from_dict`` reads
the results of every earlier version: fields added since then get the value that version's
runs had (``retrain.schedule`` is derived from the start epoch as the pipeline derives it;
no chance level, no skipped images, no starting weights). Derived numbers (totals,
reductions, the saving) are recomputed, never read.

This module imports only the core, so the report layer may import it while ``run.pipeline``
imports the report layer (docs/architecture.md, "Run directory").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ebcompress.cost.flops import FlopCount, PhaseCost, TrainingLedger


@dataclass(frozen=True)
class DataSummary:
    """The data set as the run saw it: sizes, the chance level, unreadable images skipped."""

    name: str
    train: int
    test: int
    chance_top1: float | None = None  # the most frequent test class's share
    skipped_images: int = 0
    skipped_files: tuple[str, ...] = ()  # the first few, for the report


@dataclass(frozen=True)
class TicketSummary:
    """The ticket retrained: its ratio, the epoch drawn at, whether it emerged, its size."""

    ratio: float
    epoch: int | None
    emerged: bool
    note: str
    pruned_fraction: float
    num_channels: int
    num_kept: int


@dataclass(frozen=True)
class SearchSummary:
    """The search phase: its epochs, Early-Bird's emergence record, the method's annotations.

    ``emerged_epochs`` (``f"{ratio:g}"`` -> epoch or None) and ``window_max_distances`` (per
    ratio, per epoch, None while the window fills) are recorded by EB only; ``extra`` holds
    what other methods note (sparsity, granularity, ...), shown as given.
    """

    epochs: int
    emerged_epochs: dict[str, int | None] | None = None
    window_max_distances: dict[str, list[float | None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillSummary:
    """The retraining's distillation teacher: ``dense`` (the run's searched dense network) or
    the file (with its sha256), its forward MACs per sample (charged to the retrain phase's
    FLOPs), the loss's ``alpha`` and ``temperature``, and the teacher's own test top-1
    (``top1``; None in results written before it was recorded)."""

    teacher: str
    sha256: str | None
    teacher_macs: int
    alpha: float
    temperature: float
    top1: float | None = None


@dataclass(frozen=True)
class RetrainSummary:
    """The retraining: ``mode`` reinit / inherit, ``schedule`` restart / continue, the
    epochs of the dense schedule it covered, and its distillation teacher (None: none)."""

    mode: str
    schedule: str
    start_epoch: int
    end_epoch: int
    history_epochs: int  # epochs in the retraining's history (a resume restores the earlier ones)
    distill: DistillSummary | None = None

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.start_epoch


@dataclass(frozen=True)
class Accuracy:
    """The slim network's test metrics after retraining (top-1 / top-5 as fractions)."""

    test_top1: float
    test_top5: float
    test_loss: float


@dataclass(frozen=True)
class ModelSummary:
    """The model's forward cost per sample, dense and slim."""

    name: str
    input_size: tuple[int, ...]
    dense: FlopCount
    slim: FlopCount

    @property
    def mac_reduction(self) -> float:
        return self.dense.macs / max(self.slim.macs, 1)

    @property
    def param_reduction(self) -> float:
        return self.dense.params / max(self.slim.params, 1)


@dataclass(frozen=True)
class InitSummary:
    """The weights the run started from (``model.init``): the file, its sha256, and the
    classifier modules that kept their initialisation because the file's did not fit."""

    file: str
    sha256: str
    new_head: tuple[str, ...] = ()


@dataclass(frozen=True)
class CostSummary:
    """Training cost per phase (the run's ledger) against a full dense training."""

    ledger: TrainingLedger
    dense_reference_flops: int

    @property
    def phases(self) -> list[PhaseCost]:
        return list(self.ledger.phases.values())

    @property
    def total_flops(self) -> int:
        return self.ledger.total_flops

    @property
    def total_seconds(self) -> float:
        return self.ledger.total_seconds

    @property
    def total_joules(self) -> float | None:
        return self.ledger.total_joules

    @property
    def seconds_per_phase(self) -> dict[str, float]:
        return {cost.phase: cost.seconds for cost in self.phases}

    @property
    def saving_vs_dense(self) -> float:
        """Dense training FLOPs per FLOP this run spent (below 1: it cost more)."""
        return self.dense_reference_flops / max(self.total_flops, 1)


@dataclass(frozen=True)
class RunResults:
    """Everything a finished run measured; ``state.json``'s ``results``."""

    run: str  # the recipe's name
    method: str
    seed: int
    data: DataSummary
    ticket: TicketSummary
    search: SearchSummary
    retrain: RetrainSummary
    accuracy: Accuracy
    cost: CostSummary
    model: ModelSummary
    init: InitSummary | None = None  # None: a random initialisation (and every earlier run)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, in the layout report.json copies."""
        data, ticket, retrain = self.data, self.ticket, self.retrain
        search: dict[str, Any] = {"epochs": self.search.epochs, **self.search.extra}
        for key in ("emerged_epochs", "window_max_distances"):
            if getattr(self.search, key) is not None:
                search[key] = getattr(self.search, key)
        init = self.init
        started = {} if init is None else {"init": {**vars(init), "new_head": list(init.new_head)}}
        return {
            "run": self.run,
            "method": self.method,
            "seed": self.seed,
            "data": {
                "name": data.name,
                "train": data.train,
                "test": data.test,
                "chance_top1": data.chance_top1,
                "skipped_images": data.skipped_images,
                "skipped_files": list(data.skipped_files),
            },
            "ticket": {
                "ratio": ticket.ratio,
                "epoch": ticket.epoch,
                "emerged": ticket.emerged,
                "note": ticket.note,
                "pruned_fraction": ticket.pruned_fraction,
                "num_channels": ticket.num_channels,
                "num_kept": ticket.num_kept,
            },
            "search": search,
            "retrain": {
                "mode": retrain.mode,
                "schedule": retrain.schedule,
                "start_epoch": retrain.start_epoch,
                "end_epoch": retrain.end_epoch,
                "epochs": retrain.epochs,
                "history_epochs": retrain.history_epochs,
                **({} if retrain.distill is None else {"distill": vars(retrain.distill)}),
            },
            "accuracy": {
                "test_top1": self.accuracy.test_top1,
                "test_top5": self.accuracy.test_top5,
                "test_loss": self.accuracy.test_loss,
            },
            "cost": {
                **self.cost.ledger.to_dict(),
                "dense_reference_flops": self.cost.dense_reference_flops,
                "saving_vs_dense": self.cost.saving_vs_dense,
            },
            "model": {
                "name": self.model.name,
                "input_size": list(self.model.input_size),
                "dense": self.model.dense.to_dict(),
                "slim": self.model.slim.to_dict(),
                "mac_reduction": self.model.mac_reduction,
                "param_reduction": self.model.param_reduction,
            },
            **started,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResults:
        """Inverse of :meth:`to_dict`, also for earlier versions' results (module docstring).

        A missing field or a value of the wrong type raises KeyError, TypeError or ValueError;
        :func:`ebcompress.run.state.read_state` turns that into one line naming the file.
        """
        d, t, r, a, m = (data[k] for k in ("data", "ticket", "retrain", "accuracy", "model"))
        search = dict(data["search"])
        start = int(r["start_epoch"])
        return cls(
            run=str(data["run"]),
            method=str(data["method"]),
            seed=int(data["seed"]),
            data=DataSummary(
                name=str(d["name"]),
                train=int(d["train"]),
                test=int(d["test"]),
                chance_top1=_optional_float(d.get("chance_top1")),
                skipped_images=int(d.get("skipped_images") or 0),
                skipped_files=tuple(str(f) for f in d.get("skipped_files") or ()),
            ),
            ticket=TicketSummary(
                ratio=float(t["ratio"]),
                epoch=None if t["epoch"] is None else int(t["epoch"]),
                emerged=bool(t["emerged"]),
                note=str(t["note"]),
                pruned_fraction=float(t["pruned_fraction"]),
                num_channels=int(t["num_channels"]),
                num_kept=int(t["num_kept"]),
            ),
            search=SearchSummary(
                epochs=int(search.pop("epochs")),
                emerged_epochs=search.pop("emerged_epochs", None),
                window_max_distances=search.pop("window_max_distances", None),
                extra=search,
            ),
            retrain=RetrainSummary(
                mode=str(r["mode"]),
                # the pipeline's rule, also before the field was recorded
                schedule=str(r.get("schedule") or ("restart" if start == 0 else "continue")),
                start_epoch=start,
                end_epoch=int(r["end_epoch"]),
                history_epochs=int(r["history_epochs"]),
                distill=None if r.get("distill") is None else _distill(r["distill"]),
            ),
            accuracy=Accuracy(
                test_top1=float(a["test_top1"]),
                test_top5=float(a["test_top5"]),
                test_loss=float(a["test_loss"]),
            ),
            cost=CostSummary(
                ledger=TrainingLedger.from_dict(data["cost"]),
                dense_reference_flops=int(data["cost"]["dense_reference_flops"]),
            ),
            model=ModelSummary(
                name=str(m["name"]),
                input_size=tuple(int(v) for v in m["input_size"]),
                dense=_flop_count(m["dense"]),
                slim=_flop_count(m["slim"]),
            ),
            init=None if data.get("init") is None else _init(data["init"]),
        )


def _init(data: Mapping[str, Any]) -> InitSummary:
    return InitSummary(
        file=str(data["file"]),
        sha256=str(data["sha256"]),
        new_head=tuple(str(h) for h in data.get("new_head") or ()),
    )


def _distill(data: Mapping[str, Any]) -> DistillSummary:
    return DistillSummary(
        teacher=str(data["teacher"]),
        sha256=None if data.get("sha256") is None else str(data["sha256"]),
        teacher_macs=int(data["teacher_macs"]),
        alpha=float(data["alpha"]),
        temperature=float(data["temperature"]),
        top1=_optional_float(data.get("top1")),
    )


def _flop_count(data: Mapping[str, Any]) -> FlopCount:
    return FlopCount(macs=int(data["macs"]), params=int(data["params"]))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)

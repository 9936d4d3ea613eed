"""The Trainer meters each epoch's training pass and books the joules in the ledger."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebcompress.cost.flops import TrainingLedger
from ebcompress.data import fake_data
from ebcompress.engine import prepare as engine
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.trainer import Trainer

JOULES_PER_STEP = 1.5
N_TRAIN, BATCH = 32, 8  # 4 steps per epoch


class StepCounter:
    """A fake energy counter that rises by JOULES_PER_STEP each time a training step ends."""

    name = "fake:steps"

    def __init__(self) -> None:
        self.joules = 0.0

    def read_joules(self) -> float:
        return self.joules

    def after_backward(self, model: nn.Module) -> None:  # engine callback
        self.joules += JOULES_PER_STEP


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip


def make_trainer(
    tmp_path=None, epochs: int = 2, *, callbacks=(), ledger=None, energy_counters=None
) -> Trainer:
    cfg = TrainerConfig(
        phase="search", batch_size=BATCH, optim=OptimConfig(lr=0.05),
        schedule=ScheduleConfig(epochs), progress=False, macs_per_sample=1000, run_dir=tmp_path,
        energy_counters=energy_counters,
    )  # fmt: skip
    data = fake_data(image_size=8, n_train=N_TRAIN, n_test=8, num_classes=3)
    return Trainer(tiny_net(), data, cfg, callbacks=callbacks, ledger=ledger)


def test_each_epoch_books_the_measured_joules() -> None:
    counter, ledger = StepCounter(), TrainingLedger()
    make_trainer(ledger=ledger, energy_counters=[counter], callbacks=[counter]).fit()
    cost = ledger.phases["search"]
    assert cost.epochs == 2
    # 4 training steps an epoch, each worth JOULES_PER_STEP on the fake counter.
    assert cost.joules == pytest.approx(2 * 4 * JOULES_PER_STEP)
    assert ledger.total_joules == pytest.approx(12.0)


def test_no_counter_means_not_measured_never_an_estimate() -> None:
    ledger = TrainingLedger()
    make_trainer(ledger=ledger, energy_counters=[]).fit()
    assert ledger.phases["search"].joules is None
    assert ledger.total_joules is None
    assert ledger.phases["search"].seconds > 0


def test_machine_counters_are_used_by_default(monkeypatch) -> None:
    counter, ledger = StepCounter(), TrainingLedger()
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(engine, "available_counters", lambda device: [counter])
    make_trainer(ledger=ledger, epochs=1, callbacks=[counter]).fit()
    assert ledger.phases["search"].joules == pytest.approx(4 * JOULES_PER_STEP)


def test_a_second_cpu_rank_on_a_machine_leaves_rapl_to_local_rank_0(monkeypatch) -> None:
    monkeypatch.setattr(engine, "available_counters", lambda device: [StepCounter()])
    monkeypatch.setattr(engine, "nvml_counters", lambda device: [])
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert engine._machine_counters(torch.device("cpu")) == ([], True)
    monkeypatch.setenv("LOCAL_RANK", "0")
    counters, covered = engine._machine_counters(torch.device("cpu"))
    assert len(counters) == 1 and covered
    monkeypatch.setattr(engine, "available_counters", lambda device: [])
    assert engine._machine_counters(torch.device("cpu")) == ([], False)


def test_a_lone_rank_without_counters_is_not_measured(monkeypatch) -> None:
    monkeypatch.setattr(engine, "nvml_counters", lambda device: [])
    monkeypatch.setenv("LOCAL_RANK", "1")  # "covered by local rank 0", which is absent here
    ledger = TrainingLedger()
    make_trainer(ledger=ledger, epochs=1).fit()
    assert ledger.phases["search"].joules is None


def test_joules_survive_resume(tmp_path) -> None:
    counter, ledger = StepCounter(), TrainingLedger()
    make_trainer(
        tmp_path, epochs=1, ledger=ledger, energy_counters=[counter], callbacks=[counter]
    ).fit()
    resumed_ledger = TrainingLedger()
    counter = StepCounter()
    resumed = make_trainer(
        tmp_path, epochs=2, ledger=resumed_ledger, energy_counters=[counter], callbacks=[counter]
    )
    resumed.fit(resume=True)
    assert resumed_ledger.phases["search"].epochs == 2
    assert resumed_ledger.phases["search"].joules == pytest.approx(2 * 4 * JOULES_PER_STEP)


def test_an_epoch_that_raises_stops_the_meter() -> None:
    class Boom:
        def after_backward(self, model: nn.Module) -> None:
            raise RuntimeError("boom")

    trainer = make_trainer(energy_counters=[StepCounter()], callbacks=[Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit()
    assert not trainer.energy.running

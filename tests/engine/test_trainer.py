"""The training engine: exact resume, exact metrics, callbacks, NaN stop, precision."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ebcompress.cost.flops import TrainingLedger
from ebcompress.data import DataSplit, fake_data
from ebcompress.engine.checkpoint import load_checkpoint, previous_path
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.progress import log
from ebcompress.engine.state import TrainerState
from ebcompress.engine.trainer import EpochStats, Trainer
from ebcompress.errors import UserError

CLASSES = 4


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),  # draws from the global RNG, which resume must restore
        nn.Linear(8, CLASSES),
    )


class _Jitter(Dataset):
    """Adds noise from torch's global RNG per sample, like a random augmentation."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return image + 0.05 * torch.randn_like(image), label


def tiny_data(n_train: int = 64, n_test: int = 24) -> DataSplit:
    split = fake_data(image_size=8, n_train=n_train, n_test=n_test, num_classes=CLASSES)
    return dataclasses.replace(split, train=_Jitter(split.train))


OPTIM = OptimConfig(lr=0.05, momentum=0.9, weight_decay=1e-4)


def config(epochs: int = 2, milestones: tuple[int, ...] = (1,), **fields) -> TrainerConfig:
    """Phase "search" of an ``epochs``-epoch multistep schedule at lr 0.05 (OPTIM), batches
    of 16, no progress output; ``fields`` set any other TrainerConfig field."""
    values = {"phase": "search", "batch_size": 16, "optim": OPTIM, "progress": False}
    schedule = ScheduleConfig(epochs, milestones=milestones)
    return TrainerConfig(**(values | {"schedule": schedule} | fields))


def trainer(model=None, data=None, cfg=None, *, callbacks=(), ledger=None, **fields) -> Trainer:
    """A Trainer of ``cfg`` (default: :func:`config`) with ``fields`` replaced."""
    cfg = dataclasses.replace(cfg or config(), **fields)
    return Trainer(
        model or tiny_net(), data or tiny_data(), cfg, callbacks=callbacks, ledger=ledger
    )


def metric_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ----------------------------------------------------------------------------- resume


def test_resume_is_bit_exact(tmp_path):
    straight = trainer(run_dir=tmp_path / "a")
    straight.fit()

    first = trainer(run_dir=tmp_path / "b", end_epoch=1)
    first.fit()
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed = trainer(model=tiny_net(seed=7), run_dir=tmp_path / "b")
    history = resumed.fit(resume=True)

    assert_same_weights(straight.model, resumed.model)
    assert [s.epoch for s in history] == [1, 2]
    assert [s.lr for s in history] == pytest.approx([0.05, 0.005])
    assert history[1].train_loss == straight.history[1].train_loss
    assert [m["epoch"] for m in metric_lines(tmp_path / "b")] == [1, 2]


def test_finished_phase_is_not_rerun(tmp_path):
    done = trainer(run_dir=tmp_path)
    done.fit()
    calls = []

    class Spy:
        def after_backward(self, model):
            calls.append(1)

    again = trainer(model=tiny_net(seed=5), run_dir=tmp_path, callbacks=[Spy()])
    history = again.fit(resume=True)
    assert calls == []
    assert history == done.history
    assert_same_weights(done.model, again.model)
    assert len(metric_lines(tmp_path)) == 2


def test_metrics_have_no_duplicates_after_resume(tmp_path):
    cfg = config(3, (2,))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"phase": "other", "epoch": 9}) + "\n")
    trainer(cfg=cfg, run_dir=tmp_path, end_epoch=2).fit()
    # A crash after epoch 2's metrics line but before its checkpoint, plus a torn line:
    last = tmp_path / "checkpoints" / "search" / "last.pt"
    os.replace(previous_path(last), last)
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"phase": "search", "ep')
    assert load_checkpoint(last)["epoch"] == 1

    trainer(cfg=cfg, run_dir=tmp_path).fit(resume=True)
    lines = metric_lines(tmp_path)
    assert [(m["phase"], m["epoch"]) for m in lines] == [
        ("other", 9),
        ("search", 1),
        ("search", 2),
        ("search", 3),
    ]
    assert lines[1] == EpochStats.from_dict(lines[1]).to_dict()


def test_resume_with_new_lr_rebases_the_schedule(tmp_path):
    cfg = config(3, (2,))
    trainer(cfg=cfg, run_dir=tmp_path, end_epoch=1).fit()
    lower = dataclasses.replace(OPTIM, lr=0.01)
    history = trainer(cfg=cfg, optim=lower, run_dir=tmp_path).fit(resume=True)
    assert [s.lr for s in history] == pytest.approx([0.05, 0.01, 0.001])


def test_ledger_counts_samples_and_is_restored_on_resume(tmp_path):
    ledger = TrainingLedger()
    trainer(run_dir=tmp_path, ledger=ledger, macs_per_sample=1000, end_epoch=1).fit()
    assert ledger.phases["search"].samples == 64
    fresh = TrainingLedger()
    trainer(run_dir=tmp_path, ledger=fresh, macs_per_sample=1000).fit(resume=True)
    cost = fresh.phases["search"]
    assert (cost.samples, cost.epochs) == (128, 2)
    assert cost.training_flops == 3 * 2 * 1000 * 128


# The checkpoint format (``format: 1``): what earlier versions wrote, which must still resume.
CHECKPOINT_KEYS = {
    "format", "phase", "start_epoch", "epoch", "finished", "stopped_early", "base_lr", "model",
    "optimizer", "scheduler", "scaler", "precision", "rng", "ledger", "callbacks", "history",
}  # fmt: skip


def test_the_checkpoint_keeps_format_1_and_round_trips_through_trainer_state(tmp_path):
    ledger = TrainingLedger()
    run = trainer(
        run_dir=tmp_path, end_epoch=1, ledger=ledger, macs_per_sample=10, callbacks=[Recorder()]
    )
    run.fit()
    where = tmp_path / "checkpoints" / "search" / "last.pt"
    saved = load_checkpoint(where)
    assert set(saved) == CHECKPOINT_KEYS
    assert (saved["format"], saved["phase"], saved["epoch"], saved["finished"]) == (
        1, "search", 1, True,
    )  # fmt: skip
    assert (saved["base_lr"], saved["callbacks"], saved["scaler"]) == (0.05, [{"events": 5}], None)
    assert saved["scheduler"] == {"epoch": 1, "base_lrs": [0.05]}  # the schedule is code
    assert saved["ledger"] == ledger.to_dict()
    assert saved["history"] == [stats.to_dict() for stats in run.history]

    state = TrainerState.from_checkpoint(saved, phase="search", start_epoch=0, where=where)
    assert state.history == run.history and state.partial is None
    again = state.to_checkpoint()
    assert again.keys() == saved.keys()
    assert again["history"] == saved["history"]
    with pytest.raises(UserError, match="is not a phase-'retrain' checkpoint"):
        TrainerState.from_checkpoint(saved, phase="retrain", start_epoch=0, where=where)
    with pytest.raises(UserError, match="continues a schedule from epoch 0, not 1"):
        TrainerState.from_checkpoint(saved, phase="search", start_epoch=1, where=where)


# ----------------------------------------------------------------------------- schedules
# (each schedule's lrs and the timm optimisers: test_optim.py)


def test_a_start_epoch_outside_the_schedule_is_a_one_line_user_error():
    with pytest.raises(UserError, match=r"start epoch 3 must lie in \[0, 2\]") as info:
        config(start_epoch=3)
    assert "\n" not in str(info.value)


def test_trainer_starting_late_reports_schedule_epochs():
    cfg = config(4, (3,), optim=dataclasses.replace(OPTIM, lr=0.1))
    history = trainer(cfg=cfg, start_epoch=2).fit()
    assert [(s.epoch, s.lr) for s in history] == [(3, 0.1), (4, pytest.approx(0.01))]


# ----------------------------------------------------------------------------- metrics


class _TableModel(nn.Module):
    """Returns a fixed logit row per sample; the sample's index is stored in its pixel."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.unused = nn.Parameter(torch.zeros(1))  # the optimiser needs a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].long()] + 0 * self.unused


def test_evaluate_counts_exactly_over_uneven_batches():
    # Labels are class 0; the rank of class 0 in each row decides top-1 / top-5 hits.
    ranks = [2, 6, 1, 3, 1]  # sample 2 and 4 are top-1 hits, 0 and 3 top-5 hits, 1 a miss
    rows = []
    for rank in ranks:
        row = torch.arange(6, 0, -1, dtype=torch.float32)  # class 0 has rank 1 ...
        row[[0, rank - 1]] = row[[rank - 1, 0]]
        rows.append(row)
    table = torch.stack(rows)
    index_images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1)
    labels = torch.zeros(5, dtype=torch.long)
    test = TensorDataset(index_images, labels)
    data = DataSplit("table", test, test, 6, 1, 1, (0.0,), (1.0,))
    result = trainer(_TableModel(table), data, config(batch_size=2)).evaluate()
    # Batches of 2, 2, 1: a mean of per-batch means would give (0.5 + 0 + 1) / 3 for top-1.
    assert result["top1"] == 2 / 5
    assert result["top5"] == 4 / 5
    assert result["samples"] == 5
    expected = nn.functional.cross_entropy(table, labels).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6)


def test_final_batch_of_one_is_dropped():
    history = trainer(data=tiny_data(n_train=33), cfg=config(1, ())).fit()
    assert history[0].samples == 32


# ----------------------------------------------------------------------------- callbacks


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at
        self.saved_with = None

    def after_backward(self, model: nn.Module) -> None:
        assert all(p.grad is not None for p in model.parameters())
        for p in model.parameters():
            p.grad.zero_()  # runs before the step: the weights must then never move
        self.events.append(("backward",))

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        self.events.append(("epoch", epoch, stats.epoch, stats.test_top1))
        return epoch == self.stop_at

    def state_dict(self) -> dict:
        return {"events": len(self.events)}

    def load_state_dict(self, state: dict) -> None:
        self.saved_with = state["events"]


def test_callbacks_run_in_order_and_stop_the_phase(tmp_path):
    cfg = config(4, (), optim=OptimConfig(lr=0.05, momentum=0.0, weight_decay=0.0))
    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    recorder = Recorder(stop_at=2)
    run = trainer(model=model, cfg=cfg, callbacks=[recorder, object()], run_dir=tmp_path)
    history = run.fit()

    assert run.stopped_early and run.last_epoch == 2 and len(history) == 2
    steps = 64 // 16
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["backward"] * steps + ["epoch"] + ["backward"] * steps + ["epoch"]
    assert [e[1:3] for e in recorder.events if e[0] == "epoch"] == [(1, 1), (2, 2)]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    restored = Recorder()
    resumed = trainer(cfg=cfg, callbacks=[restored, object()], run_dir=tmp_path)
    assert resumed.fit(resume=True) == history  # stopped early: not re-run
    assert restored.saved_with == 2 * steps + 2 and restored.events == []
    assert resumed.stopped_early


class BlowsUp(nn.Module):
    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.net = tiny_net()
        self.at_call = at_call
        self.calls = 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.at_call:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(tmp_path):
    run = trainer(model=BlowsUp(at_call=6), run_dir=tmp_path)  # 4 steps per epoch
    with pytest.raises(UserError) as info:
        run.fit()
    message = str(info.value)
    for part in ("'search'", "epoch 2", "step 2 of 4", "--resume --set train.lr="):
        assert part in message
    assert "\n" not in message
    assert load_checkpoint(tmp_path / "checkpoints" / "search" / "last.pt")["epoch"] == 1
    assert [m["epoch"] for m in metric_lines(tmp_path)] == [1]


def test_nan_found_mid_epoch_names_the_exact_step():
    # 80 steps: the NaN at step 5 is found by a mid-epoch poll, which reads one poll late.
    model = BlowsUp(at_call=5)
    run = trainer(model=model, data=tiny_data(n_train=160), cfg=config(batch_size=2))
    with pytest.raises(UserError, match="epoch 1, step 5 of 80"):
        run.fit()
    assert model.calls < 80  # stopped before the end of the epoch


# ----------------------------------------------------------------------------- precision, output


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision):
    run = trainer(cfg=config(1, (), channels_last=True), precision=precision)
    (stats,) = run.fit()
    assert math.isfinite(stats.train_loss) and 0 <= stats.test_top1 <= 1
    assert (run.scaler is not None) == (precision == "fp16")
    conv = run.model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert conv.dtype == torch.float32  # autocast keeps fp32 master weights


def test_unimplemented_precision_is_a_user_error():
    with pytest.raises(UserError, match="precision 'int4' is not one of fp32"):
        trainer(precision="int4")


def test_plain_output_is_one_line_per_epoch(capsys):
    trainer(progress=True).fit()
    log("mask distance 0.1")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["search", "1/2"], ["search", "2/2"]]
    assert lines[2] == "mask distance 0.1"


def test_live_bars_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)

    class Talker:
        def end_of_epoch(self, epoch, stats):
            log(f"distance at {epoch}")
            return False

    trainer(progress=True, callbacks=[Talker()]).fit()
    out = capsys.readouterr().out
    assert "distance at 1" in out and "search 2/2" in out

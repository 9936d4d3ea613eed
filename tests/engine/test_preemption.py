"""Mid-epoch checkpoints and SIGTERM / SIGINT: stop anywhere in an epoch, resume bit-exactly.

A Trainer phase checkpointed inside an epoch (``train.checkpoint_every``) and killed, or
stopped by a signal, resumes to the weights and per-epoch metrics of an uninterrupted run:
in one process (with and without loader workers), under two Gloo ranks, and through a real
``ebcompress prune`` subprocess sent SIGTERM in its search.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_energy_engine import JOULES_PER_STEP, StepCounter
from test_trainer import assert_same_weights, config, tiny_net, trainer

from ebcompress.cost.flops import TrainingLedger
from ebcompress.engine import distributed
from ebcompress.engine.checkpoint import load_checkpoint
from ebcompress.engine.preemption import CheckpointEvery, Preempted, parse_checkpoint_every
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe

STEPS = 4  # tiny_data(): 64 training samples in batches of 16
SEARCH = Path("checkpoints") / "search"
# Per-epoch values that must match exactly (seconds and images_per_s are wall-clock).
EXACT = ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5")


def exact(run_dir: Path) -> list[tuple]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [tuple(json.loads(line)[k] for k in EXACT) for line in lines]


class StopAt:
    """A callback that, at its ``at``-th training step (1-based, counted over the phase),
    sends this process ``signum`` or raises RuntimeError (a crash) when ``signum`` is 0."""

    def __init__(self, at: int, signum: int = 0) -> None:
        self.at, self.signum, self.calls = at, signum, 0

    def after_backward(self, model) -> None:
        self.calls += 1
        if self.calls == self.at:
            if not self.signum:
                raise RuntimeError("crash")
            os.kill(os.getpid(), self.signum)


# ----------------------------------------------------------------------------- the field


def test_checkpoint_every_forms_and_one_line_errors() -> None:
    assert parse_checkpoint_every(None) == CheckpointEvery()
    assert parse_checkpoint_every(500) == CheckpointEvery(steps=500)
    assert parse_checkpoint_every("500steps") == CheckpointEvery(steps=500)
    assert parse_checkpoint_every("30min") == CheckpointEvery(seconds=1800.0)
    assert parse_checkpoint_every("2h") == CheckpointEvery(seconds=7200.0)
    assert load_recipe("quickstart", ["train.checkpoint_every=90s"]).train.checkpoint_every
    for bad in ("0", "soon", "1.5h", "-3", "1.5", "true"):
        with pytest.raises(UserError, match="train.checkpoint_every") as info:
            load_recipe("quickstart", [f"train.checkpoint_every={bad}"])
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_crash_after_a_mid_epoch_checkpoint_resumes_bit_exactly(tmp_path, num_workers) -> None:
    cfg = config(checkpoint_every=CheckpointEvery(steps=2))
    straight = trainer(cfg=cfg, run_dir=tmp_path / "a", num_workers=num_workers)
    straight.fit()

    run = tmp_path / "b"
    with pytest.raises(RuntimeError, match="crash"):  # epoch 2, step 3: saved after step 2
        trainer(cfg=cfg, run_dir=run, num_workers=num_workers, callbacks=[StopAt(7)]).fit()
    state = load_checkpoint(run / SEARCH / "last.pt")
    assert (state["epoch"], state["partial"]["epoch"], state["partial"]["step"]) == (1, 2, 2)
    # The mid-epoch part of the checkpoint format, which earlier versions wrote too.
    assert set(state["partial"]) == {"epoch", "step", "steps", "ranks"}
    (mine,) = state["partial"]["ranks"]
    assert set(mine) == {"losses", "corrects", "batch_sizes", "seconds", "rng"}
    assert (mine["batch_sizes"], mine["losses"].shape, mine["corrects"].shape) == (
        [16, 16],
        (2,),
        (2,),
    )

    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed = trainer(model=tiny_net(seed=7), cfg=cfg, run_dir=run, num_workers=num_workers)
    history = resumed.fit(resume=True)
    assert_same_weights(straight.model, resumed.model)
    assert [s.train_loss for s in history] == [s.train_loss for s in straight.history]
    assert exact(run) == exact(tmp_path / "a")


def test_a_wall_clock_interval_checkpoints_inside_the_epoch(tmp_path, monkeypatch) -> None:
    import ebcompress.engine.loop as engine

    cfg = config(checkpoint_every=CheckpointEvery(seconds=1.0))
    straight = trainer(cfg=cfg, run_dir=tmp_path / "a")
    straight.fit()
    ticks = iter(range(10**6))  # a clock that advances a second per reading: always due
    monkeypatch.setattr(engine.time, "monotonic", lambda: float(next(ticks)))
    with pytest.raises(RuntimeError, match="crash"):
        trainer(cfg=cfg, run_dir=tmp_path / "b", callbacks=[StopAt(7)]).fit()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b" / SEARCH / "last.pt")["partial"]["step"] == 2
    resumed = trainer(cfg=cfg, run_dir=tmp_path / "b")
    resumed.fit(resume=True)
    assert_same_weights(straight.model, resumed.model)
    assert exact(tmp_path / "b") == exact(tmp_path / "a")


@pytest.mark.parametrize(
    ("signum", "at", "where"),
    [
        (signal.SIGTERM, 6, "at search epoch 2, step 2 of 4"),
        (signal.SIGINT, 3, "at search epoch 1, step 3 of 4"),
        (signal.SIGTERM, 4, "after search epoch 1 of 2"),  # the epoch's last step
    ],
)
def test_a_signal_finishes_the_step_saves_and_resumes_bit_exactly(
    tmp_path, signum, at, where
) -> None:
    straight = trainer(run_dir=tmp_path / "a")
    straight.fit()

    run = tmp_path / "b"
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stopper = StopAt(at, signum)
    with pytest.raises(Preempted) as info:
        trainer(run_dir=run, callbacks=[stopper]).fit()
    assert {s: signal.getsignal(s) for s in before} == before  # handlers put back
    assert stopper.calls == at  # the step in flight finished, no further step ran
    message = str(info.value)
    name = signal.Signals(signum).name
    assert message.startswith(f"stopped by {name} {where}; checkpoint saved in "), message
    assert message.endswith("; continue with --resume")
    assert load_checkpoint(run / SEARCH / "last.pt") is not None

    resumed = trainer(model=tiny_net(seed=7), run_dir=run)
    resumed.fit(resume=True)
    assert_same_weights(straight.model, resumed.model)
    assert exact(run) == exact(tmp_path / "a")


def test_without_a_run_directory_signals_are_left_alone() -> None:
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append(1))
    try:
        trainer(cfg=config(1, ()), callbacks=[StopAt(2, signal.SIGTERM)]).fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [1]


def test_a_partly_resumed_epoch_is_not_measured(tmp_path) -> None:
    """The meter of a resumed epoch saw only its second part: the phase's energy is None."""
    counter, ledger = StepCounter(), TrainingLedger()
    with pytest.raises(Preempted):
        trainer(
            run_dir=tmp_path, ledger=ledger, macs_per_sample=10, energy_counters=[counter],
            callbacks=[counter, StopAt(6, signal.SIGTERM)],
        ).fit()  # fmt: skip
    assert ledger.phases["search"].joules == pytest.approx(STEPS * JOULES_PER_STEP)
    counter, resumed = StepCounter(), TrainingLedger()
    trainer(
        run_dir=tmp_path, ledger=resumed, macs_per_sample=10, energy_counters=[counter],
        callbacks=[counter],
    ).fit(resume=True)  # fmt: skip
    cost = resumed.phases["search"]
    assert (cost.epochs, cost.samples, cost.joules) == (2, 2 * 64, None)


def test_a_mid_epoch_checkpoint_refuses_another_batch_size(tmp_path) -> None:
    with pytest.raises(Preempted):
        trainer(run_dir=tmp_path, callbacks=[StopAt(2, signal.SIGTERM)]).fit()
    with pytest.raises(UserError, match="step 2 of 4 of epoch 1, but an epoch now has 8"):
        trainer(cfg=config(batch_size=8), run_dir=tmp_path).fit(resume=True)


# ----------------------------------------------------------------------------- two Gloo ranks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, mode: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        # 64 samples, 2 ranks, batches of 8: 4 steps per epoch and rank; checkpoints at 2, 4.
        cfg = config(batch_size=8, checkpoint_every=CheckpointEvery(steps=2))
        # Only rank 1 is signalled, at epoch 2 step 1: all ranks stop after step 2 together.
        callbacks = [StopAt(5, signal.SIGTERM)] if mode == "stop" and rank == 1 else []
        run = trainer(cfg=cfg, run_dir=run_dir, callbacks=callbacks)
        try:
            run.fit(resume=mode == "resume")
        except Preempted as exc:
            Path(run_dir, f"stopped{rank}.txt").write_text(str(exc))
            return
        torch.save(run.model.state_dict(), f"{run_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _spawn(run_dir: Path, mode: str) -> None:
    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(run_dir), mode), nprocs=2, start_method="spawn"
    )


@pytest.mark.slow
def test_two_gloo_ranks_stop_together_and_resume_bit_exactly(tmp_path) -> None:
    _spawn(tmp_path / "a", "straight")
    _spawn(tmp_path / "b", "stop")
    stopped = [(tmp_path / "b" / f"stopped{r}.txt").read_text() for r in range(2)]
    # Rank 0 was not signalled; it learns the signal from the agreement all-reduce.
    for text in stopped:
        assert text.startswith("stopped by SIGTERM at search epoch 2, step 2 of 4;"), text
    assert load_checkpoint(tmp_path / "b" / SEARCH / "last.pt")["partial"]["step"] == 2
    _spawn(tmp_path / "b", "resume")
    weights = [torch.load(tmp_path / d / "rank0.pt", weights_only=True) for d in ("a", "b")]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert exact(tmp_path / "b") == exact(tmp_path / "a")


# ----------------------------------------------------------------------------- the CLI


def _harness():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "fault_injection.py"
    if "fault_injection" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fault_injection", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["fault_injection"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["fault_injection"]


@pytest.mark.slow
def test_sigterm_mid_search_exits_2_in_one_line_and_resumes_to_the_same_result(
    tmp_path,
) -> None:
    fi = _harness()
    reference_dir, run = tmp_path / "reference", tmp_path / "run"
    reference = fi.start_prune(reference_dir, resume=False, stdout=tmp_path / "reference.log")
    first = fi.start_prune(run, resume=False, stdout=tmp_path / "1.log", stderr=tmp_path / "1.err")
    assert fi.wait_for(first, run, lambda p: p.search_epochs >= 1) is not None
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 2
    lines = (tmp_path / "1.err").read_text().splitlines()
    assert len(lines) == 1, lines
    assert re.match(
        r"error: stopped by SIGTERM (at search epoch \d+, step \d+ of \d+|after search epoch "
        r"\d+ of \d+); checkpoint saved in \S+; continue with --resume$",
        lines[0],
    ), lines[0]
    assert load_checkpoint(run / SEARCH / "last.pt") is not None
    assert not (run / "run.lock").exists()

    assert fi.start_prune(run, resume=True, stdout=tmp_path / "2.log").wait() == 0
    assert reference.wait() == 0
    expected, actual = fi.comparable_result(reference_dir), fi.comparable_result(run)
    assert fi.differences(expected, actual) == []


@pytest.mark.slow
@pytest.mark.parametrize("point", ["export", "report"])
def test_sigterm_outside_training_exits_2_in_one_line_and_resumes_to_the_same_result(
    tmp_path, point
) -> None:
    """Outside a training loop there is no step to finish: SIGTERM stops the command where it
    lands (here, with a bundle or report file written beside the old one), as Ctrl-C would."""
    fi = _harness()
    reference_dir, run = tmp_path / "reference", tmp_path / "run"
    reference = fi.start_prune(reference_dir, resume=False, stdout=tmp_path / "reference.log")
    first = fi.start_prune(
        run, resume=False, stdout=tmp_path / "1.log", stderr=tmp_path / "1.err",
        fault=(point, 1, signal.SIGTERM),
    )  # fmt: skip
    assert first.wait(timeout=300) == 2
    lines = (tmp_path / "1.err").read_text().splitlines()
    assert lines == ["error: stopped by SIGTERM; resume with --resume"], lines

    assert fi.start_prune(run, resume=True, stdout=tmp_path / "2.log").wait() == 0
    assert reference.wait() == 0
    expected, actual = fi.comparable_result(reference_dir), fi.comparable_result(run)
    assert fi.differences(expected, actual) == []

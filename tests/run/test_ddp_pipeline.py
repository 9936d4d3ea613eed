"""The whole pipeline under torchrun (2 Gloo ranks on the CPU), and its data-parallel guards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ebcompress.channels.ticket import Ticket
from ebcompress.cost.energy import available_counters
from ebcompress.data import fake_data
from ebcompress.earlybird import detector as earlybird
from ebcompress.earlybird.collectives import mask_digest
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.engine import distributed
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.loop import EpochLoop
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.trainer import Trainer
from ebcompress.errors import UserError

# The quickstart recipe, shrunk: a ticket emerges at epoch 2 and the slim net trains 2 more.
TINY = [
    "train.epochs=4",
    "train.milestones=[3]",
    "train.batch_size=32",
    "data.train_subset=128",
    "data.test_subset=64",
    "prune.window=2",
    "prune.epsilon=0.5",
    "prune.watch_ratios=[]",
    "prune.learning_margin=0.01",  # one epoch on 64 images per rank: barely above chance
    "retrain.schedule=continue",
]


def torchrun(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ebcompress", "prune", "--recipe", "quickstart", "--device", "cpu",
        "--out", str(out), *[f"--set={s}" for s in TINY], *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def metrics(run_dir: Path) -> list[tuple[str, int]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(entry["phase"], entry["epoch"]) for entry in map(json.loads, lines)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("ddp") / "quick"
    done = torchrun(run_dir)
    return run_dir, done.stdout


@pytest.mark.slow
def test_two_ranks_draw_one_ticket_into_one_complete_run_directory(ddp_run) -> None:
    run_dir, stdout = ddp_run
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "finished"
    for name in ("recipe.yaml", "ticket.json", "report.json", "report.md", "masks/history.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "run.lock").exists()
    # Every epoch is written once: rank 1 writes nothing.
    assert metrics(run_dir) == [("search", 1), ("search", 2), ("retrain", 3), ("retrain", 4)]
    assert stdout.count("search 1/4") == 1  # rank 0 alone prints
    report = json.loads((run_dir / "report.json").read_text())
    ticket = Ticket.load(run_dir / "ticket.json")
    assert report["ticket"]["emerged"] and ticket.epoch == 2
    # Each rank trained on half the data; the ledger counts all of it.
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    assert phases["search"]["samples"] == 2 * 128 and phases["retrain"]["samples"] == 2 * 128
    if not available_counters("cpu"):  # no RAPL here: said so, never estimated
        assert phases["search"]["joules"] is None and phases["retrain"]["joules"] is None
    # The ticket is the mask the (rank-agreed) history recorded at the Early-Bird epoch.
    history = earlybird.MaskHistory.load(run_dir / "masks")
    assert np.array_equal(history.mask(0.3, 2), ticket.mask())


@pytest.mark.slow
def test_resume_under_ddp_ends_where_the_uninterrupted_run_ended(ddp_run, tmp_path) -> None:
    finished, _ = ddp_run
    run_dir = tmp_path / "killed"
    shutil.copytree(finished, run_dir)
    # As left by a kill during the last retrain epoch: the newest checkpoint is epoch 3's.
    checkpoints = run_dir / "checkpoints" / "retrain"
    shutil.move(checkpoints / "prev.pt", checkpoints / "last.pt")
    for name in ("report.json", "report.md", "model"):
        shutil.rmtree(run_dir / name) if (run_dir / name).is_dir() else (run_dir / name).unlink()
    (run_dir / "state.json").write_text(json.dumps({"status": "retrain", "method": "eb"}))

    torchrun(run_dir, "--resume")
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
    assert metrics(run_dir) == metrics(finished)
    resumed = load_file(run_dir / "model" / "model.safetensors")
    original = load_file(finished / "model" / "model.safetensors")
    assert resumed.keys() == original.keys()
    for key in original:
        assert torch.equal(resumed[key], original[key]), key


# ----------------------------------------------------------------------------- guards, one process


class _TwoRanks:
    """Fake collectives of a two-rank group whose other rank reports ``other_digests``."""

    def __init__(self, other_digests: list[int]) -> None:
        self.other = torch.tensor(other_digests, dtype=torch.int64)
        self.broadcasts: list[object] = []

    def is_initialized(self) -> bool:
        return True

    def all_reduce_min(self, tensor: torch.Tensor) -> torch.Tensor:
        other = torch.cat([self.other, -self.other])
        return torch.minimum(tensor, other, out=tensor)

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        self.broadcasts.append(obj)
        return obj


def tiny_bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.1, 1.0)
    return net


def fake_group(monkeypatch, ranks: _TwoRanks) -> None:
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "all_reduce_min", ranks.all_reduce_min)
    monkeypatch.setattr(distributed, "broadcast_object", ranks.broadcast_object)


def bird_for(net: nn.Module, collectives: object = None) -> EarlyBird:
    return EarlyBird(
        net,
        torch.randn(2, 3, 8, 8),
        ratio=[0.3, 0.5],
        window=2,
        epsilon=0.5,
        collectives=collectives,
    )


def test_ranks_with_the_same_masks_pass_and_rank_0_decides_emergence() -> None:
    net = tiny_bn_net(0)
    reference = bird_for(tiny_bn_net(0))
    reference.step()
    digests = [mask_digest(reference.latest_ticket(r).mask()) for r in (0.3, 0.5)]
    ranks = _TwoRanks(digests)
    bird = bird_for(net, ranks)
    assert bird.step() is False
    assert bird.step() is True  # unchanged weights: the masks repeat, so the ticket emerges
    assert ranks.broadcasts[-1].keys() == {0.3, 0.5}  # the verdict went through the broadcast


def test_ranks_with_different_masks_fail_loudly() -> None:
    other = bird_for(tiny_bn_net(1))
    other.step()
    digests = [mask_digest(other.latest_ticket(r).mask()) for r in (0.3, 0.5)]
    bird = bird_for(tiny_bn_net(0), _TwoRanks(digests))
    with pytest.raises(UserError, match="ranks drew different masks at ratio 0.3, 0.5"):
        bird.step()


class _Rank0SawEmergence:
    """A group whose rank 0 saw the 0.5 ticket emerge (the masks' check is another test's)."""

    def is_initialized(self) -> bool:
        return False

    def all_reduce_min(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        return {0.5: 0.01}


def test_a_rank_0_verdict_binds_the_other_ranks() -> None:
    bird = bird_for(tiny_bn_net(0), _Rank0SawEmergence())
    assert bird.step() is False  # window not yet full here, but rank 0 saw the 0.5 ticket emerge
    assert bird.emerged_epoch == {0.3: None, 0.5: 1}
    assert bird.tickets[0.5].extra["earlybird"]["window_max"] == 0.01


def test_a_baseline_ticket_is_checked_across_ranks(monkeypatch) -> None:
    from ebcompress.run.search_result import check_ticket_agrees_across_ranks

    ticket = Ticket(kept={"a": (0, 2)}, widths={"a": 4}, ratio=0.5)
    other = Ticket(kept={"a": (1, 2)}, widths={"a": 4}, ratio=0.5)
    fake_group(monkeypatch, _TwoRanks([mask_digest(ticket.mask())]))
    check_ticket_agrees_across_ranks(
        ticket, torch.device("cpu")
    )  # the same ticket on both ranks: fine
    fake_group(monkeypatch, _TwoRanks([mask_digest(other.mask())]))
    with pytest.raises(UserError, match="ranks drew different tickets at p=0.5"):
        check_ticket_agrees_across_ranks(ticket, torch.device("cpu"))


def test_mask_digest_is_a_nonnegative_int64_that_sees_one_flip() -> None:
    mask = np.zeros(1000, dtype=bool)
    flipped = mask.copy()
    flipped[999] = True
    assert 0 <= mask_digest(mask) < 2**62
    assert mask_digest(mask) != mask_digest(flipped)
    assert mask_digest(mask) == mask_digest(mask.copy())


def one_epoch(**fields) -> TrainerConfig:
    return TrainerConfig(
        phase="search", batch_size=8, optim=OptimConfig(lr=0.05), schedule=ScheduleConfig(1),
        progress=False, **fields,
    )  # fmt: skip


def test_sync_bn_on_the_cpu_under_ddp_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    data = fake_data(image_size=8, n_train=16, n_test=8, num_classes=4)
    with pytest.raises(UserError, match="train.sync_bn"):
        Trainer(tiny_bn_net(0), data, one_epoch(sync_bn=True))


def test_fit_hands_back_the_models_own_batchnorms(monkeypatch) -> None:
    """What Trainer does around fit() with sync_bn on CUDA, checked on the CPU: the conversion
    shares parameters and statistics, and fit() puts the original modules back."""
    data = fake_data(image_size=8, n_train=16, n_test=8, num_classes=4)
    net = tiny_bn_net(0)
    trainer = Trainer(net, data, one_epoch(energy_counters=()))
    originals = {n: m for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert all(isinstance(net.get_submodule(n), nn.SyncBatchNorm) for n in originals)
    trainer.prepared.plain_batchnorms = dict(originals)
    # SyncBatchNorm cannot run on the CPU; training is not the point here.
    monkeypatch.setattr(EpochLoop, "run", lambda self, *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        trainer.fit()
    trained = trainer.optimizer.param_groups[0]["params"]
    for name, module in originals.items():
        assert net.get_submodule(name) is module
        assert any(param is module.weight for param in trained)

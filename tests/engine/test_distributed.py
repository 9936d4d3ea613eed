"""Data-parallel training: helpers without a group, and two Gloo ranks on CPU."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ebcompress.data import fake_data
from ebcompress.engine import distributed
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.trainer import Trainer

N_TRAIN, N_TEST = 48, 21  # 21 test samples: the ranks hold 11 and 10
CLASSES = 4


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def config(phase: str = "search", run_dir: str | None = None) -> TrainerConfig:
    return TrainerConfig(
        phase=phase, batch_size=8, optim=OptimConfig(lr=0.05), schedule=ScheduleConfig(1),
        run_dir=run_dir, progress=False,
    )  # fmt: skip


def test_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce_sum(t), torch.tensor([1.0, 2.0]))
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.barrier()
    model = nn.Linear(2, 2)
    assert distributed.unwrap(nn.DataParallel(model)) is model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")  # Gloo, also where a GPU is present
    try:
        data = fake_data(image_size=8, n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES)
        run = Trainer(tiny_net(), data, config(run_dir=out_dir))
        (stats,) = run.fit()
        assert distributed.broadcast_object(rank, src=1) == 1
        torch.save(distributed.unwrap(run.net).state_dict(), f"{out_dir}/rank{rank}.pt")
        with open(f"{out_dir}/stats{rank}.json", "w") as handle:
            json.dump(stats.to_dict(), handle)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights_and_reduced_metrics(tmp_path):
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    stats = [json.loads((tmp_path / f"stats{r}.json").read_text()) for r in range(2)]
    timing = ("seconds", "images_per_s")  # each rank times itself; everything else is reduced
    assert {k: v for k, v in stats[0].items() if k not in timing} == {
        k: v for k, v in stats[1].items() if k not in timing
    }
    assert stats[0]["samples"] == N_TRAIN

    # The reduced test metrics equal one process evaluating the same weights on all samples.
    data = fake_data(image_size=8, n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES)
    model = tiny_net()
    model.load_state_dict(weights[0])
    single = Trainer(model, data, config("check")).evaluate()
    assert single["samples"] == N_TEST
    assert stats[0]["test_top1"] == single["top1"]
    assert stats[0]["test_loss"] == pytest.approx(single["loss"], rel=1e-5)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # only rank 0 writes

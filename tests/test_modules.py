"""The one unwrap: DDP, DataParallel and torch.compile wrappers, in any nesting."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ebcompress.cost.flops import count_flops
from ebcompress.engine import distributed
from ebcompress.modules import unwrap


def test_every_wrapper_is_removed_in_any_order():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    assert unwrap(model) is model
    assert unwrap(nn.DataParallel(model)) is model
    assert unwrap(torch.compile(model)) is model  # compiles lazily: nothing runs here
    assert unwrap(torch.compile(nn.DataParallel(model))) is model
    assert unwrap(nn.DataParallel(torch.compile(model))) is model


def test_a_ddp_model_unwraps_too(tmp_path: Path):
    model = nn.Linear(2, 2)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert unwrap(torch.compile(nn.parallel.DistributedDataParallel(model))) is model
    finally:
        dist.destroy_process_group()


def test_the_engine_and_the_flop_count_use_the_same_unwrap():
    assert distributed.unwrap is unwrap
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    assert count_flops(torch.compile(model), (3, 8, 8)) == count_flops(model, (3, 8, 8))

"""The detector's view of a data-parallel group: three operations, torch.distributed's default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ebcompress.earlybird.collectives import (
    TorchCollectives,
    mask_digest,
    ratios_differing_across_ranks,
)
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.engine import distributed

MASKS = {0.3: np.array([True, False, True]), 0.5: np.array([True, False, False])}


def test_without_a_group_it_is_the_single_process_of_a_world_of_one():
    ranks = TorchCollectives()
    assert not ranks.is_initialized()
    tensor = torch.tensor([3, 1])
    assert ranks.all_reduce_min(tensor) is tensor and tensor.tolist() == [3, 1]
    assert ranks.broadcast_object({"a": 1}) == {"a": 1}
    assert ratios_differing_across_ranks(MASKS, torch.device("cpu"), ranks) == []


def test_in_a_group_of_one_every_operation_runs_through_torch_distributed(tmp_path: Path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ranks = TorchCollectives()
        assert ranks.is_initialized()
        assert ranks.all_reduce_min(torch.tensor([4, -2])).tolist() == [4, -2]
        assert ranks.broadcast_object([1, "x"]) == [1, "x"]
        # one rank always agrees with itself, through the all-reduce
        assert ratios_differing_across_ranks(MASKS, torch.device("cpu"), ranks) == []
        assert ratios_differing_across_ranks(MASKS, torch.device("cpu"), distributed) == []
    finally:
        dist.destroy_process_group()


class _OtherRankDrew:
    """A second rank whose masks at ratio 0.5 differ."""

    def is_initialized(self) -> bool:
        return True

    def all_reduce_min(self, tensor: torch.Tensor) -> torch.Tensor:
        other = [mask_digest(MASKS[0.3]), mask_digest(~MASKS[0.5])]
        return torch.minimum(tensor, torch.tensor(other + [-d for d in other]))

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        return obj


def test_a_ratio_another_rank_drew_differently_is_named():
    assert ratios_differing_across_ranks(MASKS, torch.device("cpu"), _OtherRankDrew()) == [0.5]


def test_the_detector_uses_torch_distributed_unless_given_another_group():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 8, 8)
    assert isinstance(EarlyBird(net, x).collectives, TorchCollectives)
    given = _OtherRankDrew()
    assert EarlyBird(net, x, collectives=given).collectives is given

"""A phase's data loaders, with a data order that is a function of (seed, epoch).

Training batches come from a :class:`~torch.utils.data.DistributedSampler` (also for a world
of one: its shuffle depends only on seed and epoch) and a loader generator reseeded per epoch,
which seeds the loader's workers. So :meth:`Loaders.epoch` builds epoch ``e``'s iterator as it
was the first time, which is what a mid-epoch resume replays. Each rank evaluates its own
shard of the test set, in order and unpadded, so summed metrics are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ebcompress.engine import distributed


class TrainingData(Protocol):
    """What the engine trains on (an :class:`ebcompress.data.DataSplit` is one): the training
    and test sets of (image, label) samples and the number of classes."""

    train: Dataset
    test: Dataset
    num_classes: int


class _ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices r, r+w, ... in order, without padding (exact eval)."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = range(rank, size, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def epoch_seed(seed: int, epoch_index: int) -> int:
    """A seed for the loader's generator (worker seeds) that depends only on (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch_index]).generate_state(1, np.uint64)[0] >> 1)


class Loaders:
    """This rank's training and test loaders for ``data`` in batches of ``batch_size``.

    A final training batch of one sample is dropped: BatchNorm cannot train on it.
    """

    def __init__(
        self, data: TrainingData, *, batch_size: int, seed: int, num_workers: int, pin_memory: bool
    ) -> None:
        rank, world = distributed.rank(), distributed.world_size()
        self.seed = seed
        self.sampler = DistributedSampler(
            data.train, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        per_rank = len(self.sampler)
        self.generator = torch.Generator()
        self.train = DataLoader(
            data.train,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            drop_last=per_rank > 1 and per_rank % batch_size == 1,
            generator=self.generator,
        )
        self.test = DataLoader(
            data.test,
            batch_size=batch_size,
            sampler=_ShardSampler(len(data.test), rank, world),
            num_workers=num_workers,
            pin_memory=pin_memory,
        )

    @property
    def steps(self) -> int:
        """Training steps per epoch on this rank (the same on every rank)."""
        return len(self.train)

    def epoch(self, epoch: int) -> Iterator[Any]:
        """The training batches of 1-based ``epoch``, in the order that epoch always has."""
        self.sampler.set_epoch(epoch - 1)
        self.generator.manual_seed(epoch_seed(self.seed, epoch - 1))
        return iter(self.train)

"""How the Early-Bird detector reaches the other data-parallel ranks: :class:`Collectives`.

Under data parallelism every rank runs :class:`~ebcompress.earlybird.EarlyBird` on its
replica. Each epoch the ranks check that they drew the same masks (one all-reduce of the
masks' digests, :func:`ratios_differing_across_ranks`), and rank 0's emergence verdict is
broadcast, so every rank stops at the same epoch with the same ticket. Those are the three
operations of :class:`Collectives`. :class:`TorchCollectives` runs them on torch.distributed's
default process group, and as the single process of a world of one without a group;
:mod:`ebcompress.engine.distributed` exposes the default group's three as module functions,
so that module is a ``Collectives`` too.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ebcompress.errors import UserError

T = TypeVar("T")


class Collectives(Protocol):
    """What the detector needs of a data-parallel group."""

    def is_initialized(self) -> bool:
        """True when there are other ranks to agree with."""
        ...

    def all_reduce_min(self, tensor: Tensor) -> Tensor:
        """The element-wise minimum of ``tensor`` over all ranks, in place; returned."""
        ...

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """``obj`` as rank ``src`` holds it, on every rank."""
        ...


class TorchCollectives:
    """:class:`Collectives` on torch.distributed's default process group; without one, the
    single process of a world of one."""

    def is_initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def all_reduce_min(self, tensor: Tensor) -> Tensor:
        if self.is_initialized():
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        if not self.is_initialized():
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)  # pickled between our own processes
        return holder[0]


def mask_digest(mask: np.ndarray) -> int:
    """A 62-bit hash of a boolean mask (non-negative, so its negation fits an int64)."""
    packed = np.packbits(np.asarray(mask, dtype=bool).ravel())
    digest = hashlib.blake2b(packed.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def ratios_differing_across_ranks(
    masks: dict[float, np.ndarray],
    device: torch.device,
    collectives: Collectives,
) -> list[float]:
    """The ratios whose masks are not the same on every data-parallel rank ([] without a
    group): the min and the max of each mask's digest over ranks, in one all-reduce of the
    digests and their negations. ``device`` is where the all-reduce runs (NCCL: the GPU)."""
    if not collectives.is_initialized():
        return []
    digests = torch.tensor([mask_digest(m) for m in masks.values()], dtype=torch.int64)
    extremes = collectives.all_reduce_min(torch.cat([digests, -digests]).to(device)).tolist()
    lowest, highest = extremes[: len(masks)], [-e for e in extremes[len(masks) :]]
    return [r for r, lo, hi in zip(masks, lowest, highest, strict=True) if lo != hi]


def check_ranks_agree(
    masks: dict[float, np.ndarray], epoch: int, device: torch.device, collectives: Collectives
) -> None:
    """UserError on every rank when data-parallel ranks drew different masks at ``epoch``."""
    differing = ratios_differing_across_ranks(masks, device, collectives)
    if differing:
        raise UserError(
            f"Early-Bird epoch {epoch}: data-parallel ranks drew different masks at ratio "
            f"{', '.join(f'{r:g}' for r in differing)}; every rank must train the same replica "
            "(wrap the model in DistributedDataParallel and average BatchNorm statistics)"
        )

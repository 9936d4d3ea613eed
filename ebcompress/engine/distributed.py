"""Data-parallel helpers over ``torch.distributed``, all safe to call without a process group.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
:func:`init_from_env` joins that group (NCCL when CUDA is available, Gloo otherwise).
Without a group every helper behaves as the single process of a world of one.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from ebcompress.earlybird.collectives import TorchCollectives
from ebcompress.modules import unwrap

# The default group's collectives: the same ones the Early-Bird detector uses.
_DEFAULT_GROUP = TorchCollectives()
is_initialized = _DEFAULT_GROUP.is_initialized
broadcast_object = _DEFAULT_GROUP.broadcast_object
all_reduce_min = _DEFAULT_GROUP.all_reduce_min


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Join the process group described by torchrun's environment variables.

    ``device`` is where this process will train (default: CUDA when available): NCCL and
    ``cuda:LOCAL_RANK`` for CUDA, Gloo for the CPU. Returns True when a group is active
    afterwards (already initialised or just joined), False for a plain single-process run
    (WORLD_SIZE unset or 1).
    """
    if is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    kind = torch.device(device).type if device is not None else None
    use_cuda = kind == "cuda" or (kind is None and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return True


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, the only rank that prints and writes files."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over all ranks.

    Without SyncBatchNorm each rank updates its running statistics from its own shard, so
    after an epoch they differ slightly; averaging makes every rank hold the same model
    (and the checkpoint written by rank 0 equal to it).
    """
    if not is_initialized():
        return
    size = world_size()
    for buffer in unwrap(model).buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(size)

"""What every data set gives a run: a :class:`DataSplit`, its normalisation and its subsets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ebcompress.data.options import DataOptions
from ebcompress.errors import UserError

Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class DataSplit:
    """A named data set's train and test datasets plus what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of ``n`` samples dealt round-robin over the classes in a seeded order.

    Each class gives its samples in a random order; taking the lowest ranks first makes the
    subset as class-balanced as the data allows (a small class runs out, the others fill in).
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class, position = torch.sort(labels[order], stable=True)
    counts = torch.bincount(by_class)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[position] = torch.arange(len(order)) - class_start[by_class]
    chosen = order[torch.sort(rank, stable=True).indices[:n]]
    return torch.sort(chosen).values


def check_stats_override(cfg: DataOptions, in_chans: int) -> None:
    """UserError unless ``data.mean`` / ``data.std`` hold 1 value or one per channel."""
    for field in ("mean", "std"):
        values = getattr(cfg, field)
        if values is not None and len(values) not in (1, in_chans):
            raise UserError(
                f"data.{field} has {len(values)} values but {cfg.name} images have {in_chans} "
                f"channel{'s' if in_chans > 1 else ''}; give 1 value or {in_chans}"
            )


def override_stats(cfg: DataOptions | None, in_chans: int, default: Stats) -> Stats:
    """``default`` with ``data.mean`` / ``data.std`` put in where given (1 value: every channel).

    Call :func:`check_stats_override` first; this only broadcasts.
    """
    if cfg is None:
        return default

    def pick(values: Sequence[float] | None, fallback: tuple[float, ...]) -> tuple[float, ...]:
        if values is None:
            return tuple(fallback)
        return tuple(float(v) for v in values) * (in_chans if len(values) == 1 else 1)

    return pick(cfg.mean, default[0]), pick(cfg.std, default[1])

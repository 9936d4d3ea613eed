"""Helpers the benchmarks share: stand-in BN statistics, result files, machine lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
# BUDGET=short for the Fashion-MNIST benchmarks: minutes instead of half an hour
SHORT_OVERRIDES = (
    "data.train_subset=2000",
    "data.test_subset=1000",
    "train.epochs=10",
    "train.milestones=[5,8]",
    "prune.window=3",
    "prune.max_search_epochs=8",
)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN spread-out scales and statistics, as after training.

    At initialisation all BN scales are 1, so a ticket is decided by the index tie-break alone
    (it empties the first layers) and a masked/slim comparison can miss errors that only show
    with distinct channels. Random scales give a ticket spread over all layers.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.2)
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                if module.running_mean is not None:
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                    module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def write_results(
    stem: str, data: dict[str, Any], markdown: str, folder: Path | None = None
) -> tuple[Path, Path]:
    """Write ``<folder>/<stem>.json`` and ``<folder>/<stem>.md``, each atomically (a
    benchmark killed while writing leaves the previous results whole); return both paths.
    ``folder`` defaults to :data:`RESULTS`, read at the call (tests point it elsewhere)."""
    folder = RESULTS if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    write_text_atomic(json_path, json.dumps(data, indent=1) + "\n")
    write_text_atomic(md_path, markdown)
    return json_path, md_path


def machine_line(machine: dict[str, Any]) -> str:
    """One markdown line naming the machine and date of a measurement."""
    load = machine.get("load_average_1min")
    busy = f", load average {load:.1f} at the start" if load is not None else ""
    return (
        f"Measured {machine['date']} on {machine['platform']} ({machine['processor']}, "
        f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads{busy}), "
        f"torch {machine['torch']}."
    )

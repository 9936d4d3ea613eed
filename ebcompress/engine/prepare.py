"""The model made ready to train: device, SyncBatchNorm, precision, DDP, optimiser, schedule.

:func:`prepare_training` checks the device, moves the model there (channels-last if asked),
swaps BatchNorm for SyncBatchNorm under DDP when ``sync_bn`` is set (CUDA only), applies the
precision policy, wraps the model in DistributedDataParallel under ``torchrun`` and builds
the optimiser, the schedule, the gradient scaler and, with ``config.ema``, timm's
``ModelEmaV3`` of the unwrapped model (on every rank: the live weights are the same on all).
:func:`energy_counters` picks the hardware counters that meter this rank's epochs
(:mod:`ebcompress.cost.energy`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ebcompress.cost.energy import EnergyCounter, available_counters, nvml_counters
from ebcompress.engine import distributed
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.optim import EpochSchedule, build_optimizer, build_scheduler
from ebcompress.engine.precision import Precision, precision_policy
from ebcompress.errors import UserError

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3


@dataclass
class Prepared:
    """The trained model (``model``: unwrapped; ``net``: what the forward pass calls, the DDP
    wrapper under ``torchrun``), its optimiser, schedule, scaler (None without loss
    scaling), precision policy, device and memory format. ``plain_batchnorms`` holds the
    model's own BatchNorm modules while SyncBatchNorm copies stand in for them. ``ema`` is
    the weights' moving average (``ema.module``: a copy of ``model``), None without one."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: EpochSchedule
    scaler: torch.amp.GradScaler | None
    precision: Precision
    device: torch.device
    memory_format: torch.memory_format
    plain_batchnorms: dict[str, nn.Module] = field(default_factory=dict)
    ema: ModelEmaV3 | None = None

    def restore_batchnorms(self) -> None:
        """Put the model's own BatchNorm modules back in place of their SyncBatchNorm copies;
        they share the trained parameters and statistics."""
        for name, module in self.plain_batchnorms.items():
            module.train(self.model.get_submodule(name).training)
            self.model.set_submodule(name, module)
        self.plain_batchnorms = {}


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` with a CUDA index filled in; UserError when CUDA is asked for but absent."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r} requested but CUDA is not available; use cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def prepare_training(model: nn.Module, config: TrainerConfig) -> Prepared:
    """``model`` ready for ``config``'s phase (see the module docstring)."""
    device = resolve_device(config.device)
    precision = precision_policy(config.precision, device)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    model = model.to(device, memory_format=memory_format)
    plain_batchnorms: dict[str, nn.Module] = {}
    if distributed.is_initialized() and config.sync_bn:
        if device.type != "cuda":
            raise UserError(
                "train.sync_bn: SyncBatchNorm runs on CUDA devices only; "
                "set train.sync_bn=false for CPU training"
            )
        plain_batchnorms = {
            name: module
            for name, module in model.named_modules()
            if name and isinstance(module, nn.modules.batchnorm._BatchNorm)
        }
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = precision.prepare(model)
    ema = None
    if config.ema is not None:
        from timm.utils import ModelEmaV3  # timm only when asked for

        ema = ModelEmaV3(
            model,
            decay=config.ema.decay,
            use_warmup=config.ema.warmup,
            warmup_power=config.ema.warmup_power,
        )
    net: nn.Module = model
    if distributed.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = build_optimizer(model, config.optim)
    precision.prepare_optimizer(optimizer)
    return Prepared(
        model=model,
        net=net,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config.schedule, config.start_epoch),
        scaler=precision.make_scaler(),
        precision=precision,
        device=device,
        memory_format=memory_format,
        plain_batchnorms=plain_batchnorms,
        ema=ema,
    )


def energy_counters(
    config: TrainerConfig, device: torch.device
) -> tuple[list[EnergyCounter], bool]:
    """The counters that meter this rank, and whether they cover its work:
    ``config.energy_counters`` when given (covered when not empty), else this machine's."""
    if config.energy_counters is not None:
        return list(config.energy_counters), bool(config.energy_counters)
    return _machine_counters(device)


def _machine_counters(device: torch.device) -> tuple[list[EnergyCounter], bool]:
    """A GPU rank reads its GPU through NVML. RAPL zones measure whole sockets, so only one
    process per machine (LOCAL_RANK 0) reads them; the machine's other CPU ranks count as
    covered by it (if it has no RAPL it reports itself uncovered, and the epoch is not
    measured)."""
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        counters: list[EnergyCounter] = list(nvml_counters(device))
        return counters, bool(counters) or device.type == "cpu"
    counters = available_counters(device)
    if device.type == "cuda":
        return counters, any(counter.name.startswith("nvml:") for counter in counters)
    return counters, bool(counters)

"""Training precisions as small policy objects the engine asks for, by name.

``fp32`` trains in full precision; ``bf16`` and ``fp16`` run the forward pass under
``torch.autocast`` (weights, gradients and optimiser state stay fp32), ``fp16`` with a
``GradScaler`` so small gradients do not flush to zero. CPU autocast supports both on
recent PyTorch; where a device cannot autocast, :func:`precision_policy` raises a
:class:`UserError` naming the device.

A new precision subclasses :class:`Precision`, overriding the parts it needs, and calls
:func:`register_precision`: ``bfp8`` (8-bit block floating point, :mod:`ebcompress.engine.bfp8`) is
one, imported on first lookup.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ebcompress.errors import UserError


class Precision:
    """fp32: no autocast, no scaler, the model untouched. Subclasses change the parts."""

    name = "fp32"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model to train (called once, after it was moved to the device)."""
        return model

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The context the forward pass and loss run in."""
        return contextlib.nullcontext()

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler, or None when the loss needs no scaling."""
        return None

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once with the optimiser built for the prepared model (e.g. to add step hooks)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry for a bit-exact resume (weights_only-loadable values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


class AutocastPrecision(Precision):
    """Mixed precision via ``torch.autocast`` with ``dtype``; fp16 also scales the loss."""

    def __init__(self, device: torch.device, name: str, dtype: torch.dtype) -> None:
        super().__init__(device)
        if not torch.amp.is_autocast_available(device.type):
            raise UserError(
                f"precision {name!r} is not available on device {device.type!r}; use fp32"
            )
        self.name = name
        self.dtype = dtype

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return torch.autocast(self.device.type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        if self.dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)


_PRECISIONS: dict[str, Callable[[torch.device], Precision]] = {
    "fp32": Precision,
    "bf16": lambda device: AutocastPrecision(device, "bf16", torch.bfloat16),
    "fp16": lambda device: AutocastPrecision(device, "fp16", torch.float16),
}
# Modules that register further precisions when imported.
_PROVIDERS = ("ebcompress.engine.bfp8",)


def register_precision(name: str, factory: Callable[[torch.device], Precision]) -> None:
    """Make ``precision: <name>`` build its policy with ``factory(device)``."""
    _PRECISIONS[name] = factory


def precision_policy(name: str, device: torch.device) -> Precision:
    """The policy for ``name`` on ``device``; UserError for a precision not implemented."""
    for provider in _PROVIDERS:
        importlib.import_module(provider)
    factory = _PRECISIONS.get(name)
    if factory is None:
        raise UserError(
            f"train.precision {name!r} is not implemented in this version; "
            f"use one of {', '.join(sorted(_PRECISIONS))}"
        )
    return factory(torch.device(device))

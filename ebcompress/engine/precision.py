"""Training precisions as small policy objects the engine asks for, by name.

``fp32`` trains in full precision; ``bf16`` and ``fp16`` run the forward pass under
``torch.autocast`` (weights, gradients and optimiser state stay fp32), ``fp16`` with a
``GradScaler`` so small gradients do not flush to zero. CPU autocast supports both on
recent PyTorch; where a device cannot autocast, :func:`precision_policy` raises a
:class:`UserError` naming the device.

A new precision subclasses :class:`Precision`, overriding the parts it needs, and is
registered in :data:`PRECISIONS` under its name, with a factory ``(device) -> Precision``:
``bfp8`` (8-bit block floating point, :mod:`ebcompress.engine.bfp8`) is one, registered by
module path so that it is imported on first lookup only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from ebcompress.errors import UserError
from ebcompress.registry import Registry


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


#: ``train.precision`` / ``retrain.precision`` names -> ``factory(device) -> Precision``.
PRECISIONS: Registry[Callable[[torch.device], Precision]] = Registry("precision")
PRECISIONS.register("fp32", Precision)
PRECISIONS.register("bf16", partial(AutocastPrecision, name="bf16", dtype=torch.bfloat16))
PRECISIONS.register("fp16", partial(AutocastPrecision, name="fp16", dtype=torch.float16))
PRECISIONS.register_lazy("bfp8", "ebcompress.engine.bfp8:BlockFloat8")


def precision_policy(name: str, device: torch.device) -> Precision:
    """The policy for ``name`` on ``device``; UserError listing the precisions for another."""
    return PRECISIONS.get(name)(torch.device(device))

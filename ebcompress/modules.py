"""Helpers on ``nn.Module`` that every layer may use."""

from __future__ import annotations

from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module that holds the layers: every DistributedDataParallel, DataParallel and
    ``torch.compile`` wrapper around it removed, in whatever order they were applied.

    The state dict of the result has the model's own keys (no ``module.`` or ``_orig_mod.``
    prefixes), which is what checkpoints, tickets and bundles are written from.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model

"""BN-L1 sparsity: the subgradient step of network slimming and Early-Bird training.

Network slimming (Liu et al., ICCV 2017) adds ``s * sum |gamma|`` over the BatchNorm scales
to the loss; Early-Bird training (You et al., ICLR 2020, Sec. 3.3 and 4) uses the same
penalty so that the ``|gamma|`` ranking that draws a ticket separates early. Both reference
implementations apply it as a subgradient step after ``loss.backward()`` instead of a loss
term (``grad += s * sign(gamma)``), which is what :class:`BNL1Regularizer` does: no extra
autograd graph, one fused update for all BN layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.checks import check_number
from ebcompress.errors import UserError

if TYPE_CHECKING:  # torch.amp.GradScaler is torch >= 2.3; only annotations name it
    from torch.amp import GradScaler


class BNL1Regularizer:
    """Add ``strength * sign(gamma)`` to the gradient of every BatchNorm scale ``gamma``.

    Call it after ``loss.backward()`` and before ``optimizer.step()``. BNs without an affine
    weight and weights without a gradient (frozen, or unused this step) are skipped;
    ``sign(0) = 0``, so a scale that is exactly zero stays put. ``strength == 0`` is a no-op.

    The modules, not their parameters, are held, so the current ``bn.weight`` is read on every
    call. Under data-parallel training the gradients are already averaged when this runs, and
    every rank adds the same term, so the replicas stay in sync.

    Mixed precision: after ``scaler.scale(loss).backward()`` the gradients carry the
    ``torch.amp.GradScaler``'s scale factor, so a plain call would add a penalty the scaler's
    unscaling then shrinks by that factor (65,536 by default): the sparsity silently vanishes.
    Pass the scaler, ``regularizer(scaler)``: the term is added at the scale the gradients carry
    (:func:`gradient_scale`), which is right both before and after ``scaler.unscale_``.
    """

    def __init__(self, bns: Sequence[_BatchNorm], strength: float = 1e-4) -> None:
        if not 0 <= check_number(strength, "sparsity strength") < math.inf:
            raise UserError(
                f"sparsity strength {strength!r} must be finite and >= 0 (typical: 1e-5 to 1e-4)"
            )
        self.bns = list(bns)
        self.strength = float(strength)

    @torch.no_grad()
    def __call__(self, scaler: GradScaler | None = None) -> None:
        """Add the term to the gradients; ``scaler``: the ``GradScaler`` whose ``scale(loss)``
        was backpropagated, if any (class docstring)."""
        scale = gradient_scale(scaler)  # checked even when there is nothing to add
        if self.strength == 0:
            return
        weights = [
            bn.weight for bn in self.bns if bn.weight is not None and bn.weight.grad is not None
        ]
        if not weights:
            return
        grads = [w.grad for w in weights]
        signs = torch._foreach_sign(weights)
        if isinstance(scale, Tensor):  # the scaler's own tensor: no host sync per step
            torch._foreach_mul_(signs, scale * self.strength)
            torch._foreach_add_(grads, signs)
        else:
            torch._foreach_add_(grads, signs, alpha=self.strength * scale)


def gradient_scale(scaler: GradScaler | None) -> Tensor | float:
    """The factor the gradients carry now under ``scaler``: 1.0 without one, with a disabled
    one, or once ``scaler.unscale_(optimizer)`` ran this step; else the scaler's scale, as the
    0-dim tensor it holds (reading it as a float would sync the host with the device).

    Reads the scaler's per-optimizer stages (torch/amp/grad_scaler.py: READY, UNSCALED,
    STEPPED; reset by ``update()``). With several optimizers, unscale either all of them or
    none before regularizing. A call after ``scaler.step()`` is a UserError: the step has used
    the gradients already.
    """
    if scaler is None:
        return 1.0
    if not callable(getattr(scaler, "is_enabled", None)):
        raise TypeError(f"scaler must be a torch.amp.GradScaler or None, not {type(scaler)}")
    if not scaler.is_enabled():
        return 1.0
    states = getattr(scaler, "_per_optimizer_states", {})
    stages = {getattr(state.get("stage"), "name", None) for state in states.values()}
    if "STEPPED" in stages:
        raise UserError(
            "BN-L1 regularize(scaler) after scaler.step(optimizer): call it between "
            "scaler.scale(loss).backward() and scaler.step(optimizer)"
        )
    if "UNSCALED" in stages:
        return 1.0
    scale = getattr(scaler, "_scale", None)  # None until the first scaler.scale(loss)
    return scale if isinstance(scale, Tensor) else float(scaler.get_scale())


def bn_l1_penalty(bns: Sequence[_BatchNorm]) -> Tensor:
    """``sum |gamma|`` over the affine BNs, detached: for logging, not for backpropagation."""
    weights = [bn.weight.detach() for bn in bns if bn.weight is not None]
    if not weights:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(weights, 1)).sum()

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

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ebcompress.checks import check_number
from ebcompress.errors import UserError


class BNL1Regularizer:
    """Add ``strength * sign(gamma)`` to the gradient of every BatchNorm scale ``gamma``.

    Call it after ``loss.backward()`` and before ``optimizer.step()``. BNs without an affine
    weight and weights without a gradient (frozen, or unused this step) are skipped;
    ``sign(0) = 0``, so a scale that is exactly zero stays put. ``strength == 0`` is a no-op.

    The modules, not their parameters, are held, so the current ``bn.weight`` is read on every
    call. Under data-parallel training the gradients are already averaged when this runs, and
    every rank adds the same term, so the replicas stay in sync. With a
    ``torch.amp.GradScaler`` the gradients are still scaled after ``backward()``: call
    ``scaler.unscale_(optimizer)`` first, or the penalty is shrunk by the scale factor.
    """

    def __init__(self, bns: Sequence[_BatchNorm], strength: float = 1e-4) -> None:
        if not 0 <= check_number(strength, "sparsity strength") < math.inf:
            raise UserError(
                f"sparsity strength {strength!r} must be finite and >= 0 (typical: 1e-5 to 1e-4)"
            )
        self.bns = list(bns)
        self.strength = float(strength)

    @torch.no_grad()
    def __call__(self) -> None:
        if self.strength == 0:
            return
        weights = [
            bn.weight for bn in self.bns if bn.weight is not None and bn.weight.grad is not None
        ]
        if not weights:
            return
        grads = [w.grad for w in weights]
        torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=self.strength)


def bn_l1_penalty(bns: Sequence[_BatchNorm]) -> Tensor:
    """``sum |gamma|`` over the affine BNs, detached: for logging, not for backpropagation."""
    weights = [bn.weight.detach() for bn in bns if bn.weight is not None]
    if not weights:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(weights, 1)).sum()

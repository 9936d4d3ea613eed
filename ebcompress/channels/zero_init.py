"""Zero-initialised BatchNorm scales, and why they must not decide a BN-scale ranking.

timm's ResNets (and RegNets, CSPNets, MobileViTs, ...) default to ``zero_init_last=True`` and
torchvision's offer ``zero_init_residual``: the last BN of every residual branch starts with
all scales 0, so each block starts as the identity (Goyal et al., 2017). The Early-Bird /
network-slimming importance (You et al., ICLR 2020, Sec. 3.2; Liu et al., ICCV 2017) ranks a
channel by the mean ``|gamma|`` of its group's BNs, so the residual stream's group, whose BNs
are mostly those branch ends, starts at the bottom of the global ranking and the L1 penalty
keeps it there: a default ``timm:resnet10t`` at p = 0.5 kept one channel of each residual
stream and retrained to 19.7 % where the dense network had 90 %.

:class:`ebcompress.channels.graph.ChannelGraph` therefore leaves the BNs this module finds out of
their group's importance (when the group has other BNs), and the ticket names them. The
model itself is not touched: resetting those scales to 1 instead wrecks the training of
some architectures (regnetx_002 on digits: a first-epoch loss of 11.5 and 19 % test top-1
after 6 epochs, against 1.55 and 94 % with timm's init).

The BN-L1 penalty still applies to those BNs: it pushes a residual branch's output towards
zero, which is network slimming's own objective there; only their ranking weight is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def is_zero_initialised(bn: _BatchNorm) -> bool:
    """An affine BatchNorm whose scales are all exactly zero (an initialisation, not a
    trained state: training moves every scale off zero)."""
    return bool(bn.affine and bn.weight.numel() and not bn.weight.detach().any())


def find_zero_init_bn(
    model: nn.Module, batchnorms: Iterable[_BatchNorm] | None = None
) -> tuple[str, ...]:
    """Module names of the zero-initialised BatchNorms of ``model`` (or among
    ``batchnorms``), in module order."""
    chosen = None if batchnorms is None else set(batchnorms)
    return tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        and (chosen is None or module in chosen)
        and is_zero_initialised(module)
    )

"""The Early-Bird search (You et al., ICLR 2020, Sec. 3): the BN-L1 penalty, one mask per
epoch, the FIFO window and the emergence test, only once the network has learned.

The names below load on first use (PEP 562), so the engine can use ``collectives`` without
importing the channel machinery and torch-pruning.
"""

from ebcompress.lazy import lazy_exports

_PUBLIC = {
    "BNL1Regularizer": "ebcompress.earlybird.sparsity",
    "EarlyBird": "ebcompress.earlybird.detector",
    "MaskHistory": "ebcompress.earlybird.mask_history",
}

__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)

__all__ = sorted(_PUBLIC)

"""The Early-Bird search (You et al., ICLR 2020, Sec. 3): the BN-L1 penalty, one mask per
epoch, the FIFO window and the emergence test, only once the network has learned."""

from ebcompress.earlybird.detector import EarlyBird
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.earlybird.sparsity import BNL1Regularizer

__all__ = ["BNL1Regularizer", "EarlyBird", "MaskHistory"]

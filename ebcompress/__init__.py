"""ebcompress: Early-Bird ticket training and graph-aware channel slimming for PyTorch CNNs."""

from ebcompress.errors import UserError
from ebcompress.ticket import Ticket, mask_distance

__version__ = "0.1.0"

__all__ = ["Ticket", "UserError", "mask_distance", "__version__"]

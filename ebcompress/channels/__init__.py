"""Channel machinery: trace torch-pruning groups, probe what slims exactly, rank and draw a
ticket, and slim a network to it.

``groups`` traces, ``tp_compat`` scopes the torch-pruning workarounds, ``probe`` finds the
groups that must stay dense, ``graph`` ranks and draws (``ChannelGraph``, ``draw_ticket``),
``ticket`` is the drawn result, ``slim`` cuts the network. Nothing here imports the recipe
schema, pydantic, safetensors or onnx.
"""

from ebcompress.channels.graph import ChannelGraph, draw_ticket
from ebcompress.channels.slim import masked_equivalent, slim
from ebcompress.channels.ticket import Ticket, mask_distance

__all__ = ["ChannelGraph", "Ticket", "draw_ticket", "mask_distance", "masked_equivalent", "slim"]

"""Channel machinery: trace torch-pruning groups, probe what slims exactly, rank and draw a
ticket, and slim a network to it.

``groups`` traces, ``tp_compat`` scopes the torch-pruning workarounds, ``probe`` finds the
groups that must stay dense, ``graph`` ranks and draws (``ChannelGraph``, ``draw_ticket``) by
the rules of ``draw_options`` (``DrawOptions``, ``Budget``), with ``ranking``'s arithmetic,
``budget`` cuts the ranking where a cost budget is met, counting with ``cost_model``,
``ticket`` is the drawn result, ``slim`` cuts the network. Nothing here imports the recipe schema,
pydantic, safetensors or onnx.

The names below load on first use (PEP 562), so the recipe schema can import
``ebcompress.channels.draw_options`` without torch-pruning. The ``slim`` function is not
among them: ``ebcompress.channels.slim`` is its module (use ``eb.slim`` or
``from ebcompress.channels.slim import slim``).
"""

from ebcompress.lazy import lazy_exports

_PUBLIC = {
    "Budget": "ebcompress.channels.draw_options",
    "ChannelGraph": "ebcompress.channels.graph",
    "DrawOptions": "ebcompress.channels.draw_options",
    "Ticket": "ebcompress.channels.ticket",
    "draw_ticket": "ebcompress.channels.graph",
    "mask_distance": "ebcompress.channels.ticket",
    "masked_equivalent": "ebcompress.channels.slim",
}


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)

__all__ = sorted(_PUBLIC)

"""The paper's baselines under the same Method protocol as Early-Bird (You et al., ICLR 2020,
Table 2): network slimming (``ns``), one-shot lottery ticket (``lt``), SNIP (``snip``) and
ThiNet (``thinet``). :mod:`ebcompress.methods.catalog` names them; their options live in the
torch-free ``*_options`` modules beside them.

The classes load on first use (PEP 562), so the recipe schema and ``ebcompress --help`` can
read the options modules without importing torch.
"""

from ebcompress.lazy import lazy_exports

_PUBLIC = {
    "LotteryTicket": "ebcompress.baselines.lottery_ticket",
    "NetworkSlimming": "ebcompress.baselines.network_slimming",
    "Snip": "ebcompress.baselines.snip",
    "ThiNet": "ebcompress.baselines.thinet",
}


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)

__all__ = sorted(_PUBLIC)

"""The paper's baselines under the same Method protocol as Early-Bird (You et al., ICLR 2020,
Table 2): network slimming (``ns``), one-shot lottery ticket (``lt``), SNIP (``snip``) and
ThiNet (``thinet``). :mod:`ebcompress.methods.catalog` names them; their options live in the
torch-free ``*_options`` modules beside them.

The classes load on first use (PEP 562), so the recipe schema and ``ebcompress --help`` can
read the options modules without importing torch.
"""

import importlib
from typing import Any

_PUBLIC = {
    "LotteryTicket": "ebcompress.baselines.lottery_ticket",
    "NetworkSlimming": "ebcompress.baselines.network_slimming",
    "Snip": "ebcompress.baselines.snip",
    "ThiNet": "ebcompress.baselines.thinet",
}


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ebcompress.baselines' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = sorted(_PUBLIC)

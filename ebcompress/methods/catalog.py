"""Every pruning method by key, without importing torch: what ``--help``, the recipe and
compare need to know about a method before one runs.

Each entry is a :class:`MethodInfo`: a title, a one-line summary, the method's own recipe
options (``prune.<key>``, a :class:`~ebcompress.methods.options.MethodOptions`) and where its
implementation lives, imported only by :func:`ebcompress.methods.base.get_method`. The keys
are listed here once, in the paper's Table 2 order; the recipe schema, the CLI help and
compare's default method list all read them from :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ebcompress.baselines.lottery_ticket_options import LotteryTicketOptions
from ebcompress.baselines.snip_options import SnipOptions
from ebcompress.baselines.thinet_options import ThiNetOptions
from ebcompress.methods.options import MethodOptions
from ebcompress.registry import Registry, check_target


@dataclass(frozen=True)
class MethodInfo:
    """A method as the catalogue lists it. ``implementation`` is ``"module:Class"`` of its
    :class:`~ebcompress.methods.base.Method`; ``options`` its ``prune.<key>`` section (None:
    it reads only the shared ``prune`` fields).

    ``shares`` says what several ratios of one recipe can share (:mod:`ebcompress.run.shared`):
    ``"search"``, one Early-Bird search watching every ratio; ``"dense"``, one dense
    training, because the method's search trains the full schedule the same way whatever the
    ratio and draws the ticket afterwards; None, nothing worth sharing (SNIP's search is a
    few batches at initialisation, which every ratio's run builds from the same seed)."""

    title: str
    summary: str
    implementation: str
    options: type[MethodOptions] | None = None
    shares: Literal["search", "dense"] | None = None

    def __post_init__(self) -> None:
        check_target(self.implementation)


METHODS: Registry[MethodInfo] = Registry("method")
METHODS.register(
    "eb",
    MethodInfo(
        "EB Train",
        "train dense with the BN-L1 penalty and stop as soon as the ticket emerges",
        "ebcompress.methods.eb_train:EarlyBirdTrain",
        shares="search",
    ),
)
METHODS.register(
    "ns",
    MethodInfo(
        "Network slimming",
        "the full dense schedule with the BN-L1 penalty, then prune by BN scale",
        "ebcompress.baselines.network_slimming:NetworkSlimming",
        shares="dense",
    ),
)
METHODS.register(
    "lt",
    MethodInfo(
        "Lottery ticket (one-shot)",
        "train dense, prune by weight magnitude, rewind the survivors (prune.lt)",
        "ebcompress.baselines.lottery_ticket:LotteryTicket",
        LotteryTicketOptions,
        shares="dense",
    ),
)
METHODS.register(
    "snip",
    MethodInfo(
        "SNIP",
        "prune at initialisation by connection sensitivity, then train (prune.snip)",
        "ebcompress.baselines.snip:Snip",
        SnipOptions,
    ),
)
METHODS.register(
    "thinet",
    MethodInfo(
        "ThiNet",
        "train dense, prune each layer by what the next one needs, rescale (prune.thinet)",
        "ebcompress.baselines.thinet:ThiNet",
        ThiNetOptions,
        shares="dense",
    ),
)

"""The paper's baselines under the same Method protocol as Early-Bird (You et al., ICLR 2020,
Table 2): network slimming (``ns``), one-shot lottery ticket (``lt``), SNIP (``snip``) and
ThiNet (``thinet``). Importing this package registers them with :mod:`ebcompress.methods.base`."""

from ebcompress.baselines.lottery_ticket import LotteryTicket
from ebcompress.baselines.network_slimming import NetworkSlimming
from ebcompress.baselines.snip import Snip
from ebcompress.baselines.thinet import ThiNet

__all__ = ["LotteryTicket", "NetworkSlimming", "Snip", "ThiNet"]

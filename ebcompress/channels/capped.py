"""Groups the ranking wanted smaller than their limit: naming them, once, in a warning.

:meth:`ebcompress.channels.graph.ChannelGraph.draw` caps every group (``max_group_ratio``,
``min_keep``) and lists those the cap bound in ``Ticket.capped``; this module turns that
into the one-line summary and the :class:`CappedGroupsWarning` a user sees.
"""

from __future__ import annotations

import warnings

from ebcompress.channels.ticket import Ticket


class CappedGroupsWarning(UserWarning):
    """A ticket has groups the global ranking wanted to shrink below ``max_group_ratio`` or
    ``min_keep``: the requested ratio was met by pruning other groups harder."""


def capped_summary(ticket: Ticket, limit: int = 4) -> str:
    """One line naming the ticket's capped groups (at most ``limit``, then a count)."""
    counts = ticket.kept_counts()
    shown = [
        f"{name} ({counts[name]}/{ticket.widths[name]}, {why})"
        for name, why in list(ticket.capped.items())[:limit]
    ]
    more = len(ticket.capped) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def warn_capped(ticket: Ticket) -> None:
    """Emit a :class:`CappedGroupsWarning` when ``ticket`` has groups at their limit."""
    if ticket.capped:
        warnings.warn(
            f"ticket at p={ticket.ratio:g}: {len(ticket.capped)} channel group(s) stopped at "
            f"their limit: {capped_summary(ticket)}; the ranking wanted to prune them further "
            "(raise prune.max_group_ratio to allow it, 1.0 = the paper's uncapped rule)",
            CappedGroupsWarning,
            stacklevel=3,
        )

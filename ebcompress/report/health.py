"""Is the slim model any good? The health verdict every run carries.

A run can finish every phase and still hand over a broken network: a residual stream pruned
to one channel, a ticket drawn from a network that never learned, a retraining too short to
recover. Its FLOPs saving then means nothing. :func:`assess_run` puts the numbers that tell
side by side (the dense accuracy at the ticket's epoch, the final slim accuracy, the chance
level) and turns them into a status:

``failed``
    the final top-1 is near chance (below ``chance + 0.1 x (1 - chance)``), or more than
    :data:`FAILED_DROP` below the dense network's at the ticket's epoch. The run's saving is
    not a success and is never shown as one.
``warning``
    the final top-1 is more than :data:`WARNING_DROP` below the dense one, or something a user
    should know happened: groups stopped at their cap, no ticket emerged, images were
    skipped, training diverged and was resumed.
``ok``
    none of that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ebcompress.channels.capped import capped_summary
from ebcompress.channels.ticket import Ticket

FAILED_DROP = 0.05  # 5 points of top-1 below the dense network at the ticket's epoch
WARNING_DROP = 0.02
NEAR_CHANCE_MARGIN = 0.1  # of the headroom above chance


def near_chance(top1: float, chance_top1: float) -> bool:
    """Whether a top-1 (a fraction) is no better than guessing: below ``chance +``
    :data:`NEAR_CHANCE_MARGIN` of the headroom above it."""
    return top1 < chance_top1 + NEAR_CHANCE_MARGIN * (1 - chance_top1)


@dataclass(frozen=True)
class RunHealth:
    """The health section of ``report.json``; ``flags`` are one-line findings, worst first."""

    status: str
    flags: tuple[str, ...]
    final_top1: float
    chance_top1: float | None
    dense_top1_at_ticket: float | None
    capped_groups: dict[str, str] = field(default_factory=dict)
    kept_dense_groups: dict[str, str] = field(default_factory=dict)
    zero_init_bns: tuple[str, ...] = ()
    skipped_images: int = 0
    divergence: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags"] = list(self.flags)
        out["zero_init_bns"] = list(self.zero_init_bns)
        return out


def assess_run(
    *,
    final_top1: float,
    ticket: Ticket,
    chance_top1: float | None = None,
    dense_top1_at_ticket: float | None = None,
    emerged: bool = True,
    skipped_images: int = 0,
    divergence: str | None = None,
    teacher_top1: float | None = None,
) -> RunHealth:
    """The verdict on a finished run (module docstring); every input is in ``report.json``."""
    failures, warnings = [], []
    if chance_top1 is not None and near_chance(final_top1, chance_top1):
        failures.append(
            f"final top-1 {final_top1:.1%} is near chance ({chance_top1:.1%}): the slim "
            "model is broken; look at the capped groups and the retraining below"
        )
    if dense_top1_at_ticket is not None:
        drop = dense_top1_at_ticket - final_top1
        where = f"{drop * 100:.1f} points below the dense network's {dense_top1_at_ticket:.1%}"
        if drop > FAILED_DROP and not failures:
            failures.append(
                f"final top-1 {final_top1:.1%} is {where} at the ticket's epoch: the slim "
                "model has not recovered (retrain longer, or prune less)"
            )
        elif drop > WARNING_DROP and not failures:
            warnings.append(f"final top-1 is {where} at the ticket's epoch")
    if ticket.capped:
        warnings.append(
            f"{len(ticket.capped)} channel group(s) stopped at their limit, the ranking wanted "
            f"them smaller: {capped_summary(ticket, limit=2)}"
        )
    if not emerged:
        warnings.append("no Early-Bird ticket emerged; the newest mask was used")
    if skipped_images:
        warnings.append(f"{skipped_images} unreadable image(s) were skipped")
    if divergence:
        warnings.append(f"training diverged once and was resumed: {divergence}")
    if teacher_top1 is not None and teacher_top1 < final_top1:
        # an EB teacher is the dense net at an early ticket epoch, often far from trained
        warnings.append(
            f"the distillation teacher's top-1 {teacher_top1:.1%} is below the slim network's "
            f"{final_top1:.1%}: retrain.distill pulled it towards a weaker model; give a "
            "trained teacher file, lower retrain.distill.alpha, or drop it"
        )
    status = "failed" if failures else "warning" if warnings else "ok"
    return RunHealth(
        status=status,
        flags=tuple(failures + warnings),
        final_top1=final_top1,
        chance_top1=chance_top1,
        dense_top1_at_ticket=dense_top1_at_ticket,
        capped_groups=dict(ticket.capped),
        kept_dense_groups=dict(ticket.kept_dense),
        zero_init_bns=ticket.zero_init_bns,
        skipped_images=skipped_images,
        divergence=divergence,
    )

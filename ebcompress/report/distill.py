"""report.md's lines on a retraining that distilled from a teacher (``retrain.distill``).

The teacher ran one forward pass per trained sample and no backward; the ledger charged
those passes to the phase (``PhaseCost.teacher_flops``, in its training FLOPs), so the cost
table says what part of a phase's FLOPs is the teacher's and which teacher it was.
"""

from __future__ import annotations

from collections.abc import Callable

from ebcompress.cost.flops import PhaseCost
from ebcompress.run.results import DistillSummary, RunResults


def teacher_name(distill: DistillSummary) -> str:
    """``dense`` as the network it stands for, a file by its path."""
    if distill.teacher == "dense":
        return "the run's dense network (the one the ticket was drawn from)"
    return f"`{distill.teacher}`"


def _settings(distill: DistillSummary) -> str:
    checksum = "" if distill.sha256 is None else f"sha256 `{distill.sha256[:16]}…`, "
    return f"{checksum}alpha = {distill.alpha:g}, T = {distill.temperature:g}"


def training_sentence(results: RunResults, count: Callable[[float], str]) -> str:
    """The training section's sentence on the teacher; empty without one."""
    distill = results.retrain.distill
    if distill is None:
        return ""
    macs = count(distill.teacher_macs)
    accuracy = "" if distill.top1 is None else f" The teacher's own test top-1: {distill.top1:.2%}."
    return (
        f" It distilled from {teacher_name(distill)} ({_settings(distill)}; Hinton et al. "
        "2015: (1 - alpha) x cross-entropy + alpha x T² x KL divergence of the softened "
        f"outputs); the teacher ran one forward pass per training sample ({macs} MACs), "
        f"charged to the phase.{accuracy}"
    )


def macs_cell(phase: PhaseCost, count: Callable[[float], str]) -> str:
    """The cost table's MACs per sample: the phase's network's, and its teacher's."""
    if not phase.teacher_macs_per_sample:
        return count(phase.macs_per_sample)
    return (
        f"{count(phase.macs_per_sample)} + teacher {count(phase.teacher_macs_per_sample)} "
        "(forward only)"
    )


def cost_notes(results: RunResults, count: Callable[[float], str]) -> list[str]:
    """One line under the cost table per phase that ran a teacher; none without."""
    lines = []
    for phase in results.cost.phases:
        if not phase.teacher_macs_per_sample:
            continue
        distill = results.retrain.distill if phase.phase == "retrain" else None
        source = (
            "a teacher" if distill is None else f"{teacher_name(distill)} ({_settings(distill)})"
        )
        lines.append(
            f"{phase.phase}: distilled from {source}; the teacher's forward passes, "
            f"{count(phase.teacher_flops)} FLOPs (2 x its MACs x samples, no backward), are "
            "included in the phase's training FLOPs."
        )
    return [*lines, ""] if lines else []

"""The health verdict: a broken slim model is never a success."""

from __future__ import annotations

from ebcompress.channels.ticket import Ticket
from ebcompress.report.health import assess_run


def _ticket(**fields) -> Ticket:
    return Ticket(kept={"a": (0, 1), "b": (0,)}, widths={"a": 4, "b": 10}, ratio=0.5, **fields)


def test_a_healthy_run_is_ok_with_no_flags() -> None:
    health = assess_run(
        final_top1=0.9, ticket=_ticket(), chance_top1=0.1, dense_top1_at_ticket=0.905
    )
    assert health.status == "ok" and health.flags == ()


def test_near_chance_fails_and_says_so_first() -> None:
    health = assess_run(
        final_top1=0.15, ticket=_ticket(), chance_top1=0.1, dense_top1_at_ticket=0.9
    )
    assert health.failed
    assert len(health.flags) == 1 and "near chance" in health.flags[0]


def test_far_below_the_dense_network_fails_a_little_below_warns() -> None:
    far = assess_run(final_top1=0.676, ticket=_ticket(), chance_top1=0.1, dense_top1_at_ticket=0.89)
    assert far.failed and "21.4 points below" in far.flags[0]
    near = assess_run(final_top1=0.86, ticket=_ticket(), chance_top1=0.1, dense_top1_at_ticket=0.89)
    assert near.status == "warning" and "3.0 points below" in near.flags[0]


def test_capped_groups_and_other_events_warn_and_are_carried() -> None:
    ticket = _ticket(capped={"b": "max_group_ratio"}, zero_init_bns=("bn2",))
    health = assess_run(
        final_top1=0.9,
        ticket=ticket,
        chance_top1=0.1,
        emerged=False,
        skipped_images=3,
        divergence="phase 'search': the training loss became NaN/inf",
    )
    assert health.status == "warning" and len(health.flags) == 4
    out = health.to_dict()
    assert out["capped_groups"] == {"b": "max_group_ratio"}
    assert out["zero_init_bns"] == ["bn2"] and out["skipped_images"] == 3
    assert out["dense_top1_at_ticket"] is None


def test_a_teacher_less_accurate_than_its_student_is_a_warning() -> None:
    ticket = Ticket(kept={"g": (0, 1)}, widths={"g": 4}, ratio=0.5, epoch=3)
    weak = assess_run(final_top1=0.9, ticket=ticket, teacher_top1=0.7)
    assert weak.status == "warning"
    assert "teacher's top-1 70.0% is below the slim network's 90.0%" in weak.flags[0]
    assert assess_run(final_top1=0.9, ticket=ticket, teacher_top1=0.95).status == "ok"

"""The learning check in front of Early-Bird emergence."""

from __future__ import annotations

import math

import pytest

from ebcompress.earlybird.learning import LearningCheck
from ebcompress.errors import UserError


def test_accuracy_threshold_is_chance_plus_a_share_of_the_headroom() -> None:
    check = LearningCheck(num_classes=10)
    assert check.chance == pytest.approx(0.1)
    assert check.top1_needed == pytest.approx(0.28)
    assert not check.update(1, train_top1=0.15)
    assert check.update(2, train_top1=0.3) and check.learned_epoch == 2
    assert check.update(3, train_top1=0.05)  # sticky: once learned, stays learned
    assert check.learned_epoch == 2


def test_loss_threshold_uses_the_uniform_guess_or_the_first_epoch() -> None:
    known = LearningCheck(num_classes=10)
    assert known.update(1, train_loss=2.3) is False
    assert known.loss_needed == pytest.approx(0.8 * math.log(10))
    assert known.update(2, train_loss=1.8)
    unknown = LearningCheck()
    assert unknown.update(1, train_loss=4.0) is False  # its own reference: 3.2 to beat
    assert not unknown.update(2, train_loss=3.5)
    assert unknown.update(3, train_loss=3.1) and unknown.learned_epoch == 3


def test_accuracy_wins_over_loss_when_both_are_given() -> None:
    check = LearningCheck(num_classes=10)
    # a loss far below ln(10) at chance accuracy (e.g. a confident majority guess) is no proof
    assert not check.update(1, train_top1=0.1, train_loss=0.5)


def test_describe_names_the_best_accuracy_and_the_target() -> None:
    check = LearningCheck(chance=0.1)
    check.update(1, train_top1=0.12)
    check.update(2, train_top1=0.14)
    assert check.describe() == "best train top-1 14.0%, needed 28.0% (chance 10.0%)"
    assert LearningCheck().describe() == "no training metrics were given"


def test_state_round_trip_and_bad_arguments() -> None:
    check = LearningCheck(num_classes=4)
    check.update(1, train_top1=0.9)
    copy = LearningCheck(num_classes=4)
    copy.load_state_dict(check.state_dict())
    assert copy == check
    with pytest.raises(UserError, match="margin"):
        LearningCheck(margin=1.0)
    with pytest.raises(UserError, match="chance"):
        LearningCheck(chance=1.0)

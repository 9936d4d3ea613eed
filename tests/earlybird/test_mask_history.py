"""MaskHistory views."""

from __future__ import annotations

import numpy as np
import pytest

from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.errors import UserError


def test_select_keeps_only_the_named_ratios_with_their_distances() -> None:
    history = MaskHistory(window=2)
    rng = np.random.default_rng(0)
    for epoch in (1, 2, 3):
        for ratio in (0.3, 0.5):
            history.append(ratio, epoch, rng.random(40) > ratio)
    chosen = history.select([0.5])
    assert chosen.ratios == [0.5] and chosen.window == 2
    assert chosen.window_max_distances(0.5) == history.window_max_distances(0.5)
    with pytest.raises(UserError, match="no masks of ratio 0.7"):
        history.select([0.7])

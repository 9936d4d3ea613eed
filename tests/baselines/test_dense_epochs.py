"""prune.dense_epochs: the dense training network slimming, LT and ThiNet prune after."""

from __future__ import annotations

import pytest
from tiny_runs import tiny_recipe, tiny_run

from ebcompress.baselines.network_slimming import NetworkSlimming
from ebcompress.errors import UserError
from ebcompress.methods.base import train_dense


def test_n_dense_epochs_train_the_schedule_scaled_to_n() -> None:
    # train.epochs 2, milestone 1: a 4-epoch dense phase decays after epoch 2 (scaled), not 1
    run = tiny_run(tiny_recipe(prune={"method": "ns", "dense_epochs": 4}))
    trainer = train_dense(run)
    lrs = [stats.lr for stats in trainer.history]
    assert len(lrs) == 4 and run.ledger.phases["search"].epochs == 4
    assert lrs[0] == lrs[1] == pytest.approx(0.1) and lrs[2] == lrs[3] == pytest.approx(0.01)


def test_zero_dense_epochs_train_nothing_and_check_nothing() -> None:
    run = tiny_run(
        tiny_recipe(model={"init": "weights.pt"}, prune={"method": "ns", "dense_epochs": 0})
    )
    trainer = train_dense(run)  # the model was built here; the recipe only names its file
    assert trainer.last_epoch == 0 and not trainer.history and not run.ledger.phases


def test_a_random_start_cannot_be_pruned_untrained() -> None:
    run = tiny_run(tiny_recipe(prune={"method": "ns", "dense_epochs": 0}))
    with pytest.raises(UserError, match="set model.init to a trained weights file") as err:
        NetworkSlimming().search(run)
    assert "\n" not in str(err.value)

import json
import logging

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ebcompress.cost.flops import (
    TRAIN_FLOPS_PER_FORWARD_FLOP,
    FlopCount,
    TrainingLedger,
    count_flops,
    training_flops,
)
from ebcompress.errors import UserError

# 3x8x8 input: conv 3->8 (3x3, pad 1) gives 8x8x8, conv 8->16 (3x3, stride 2, pad 1) gives 16x4x4.
PLAIN_MACS = 8 * 8 * 8 * (3 * 9) + 16 * 4 * 4 * (8 * 9) + 256 * 10
PLAIN_PARAMS = 8 * 3 * 9 + (16 * 8 * 9 + 16) + (256 * 10 + 10)


def plain_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


def test_plain_net_matches_hand_count():
    count = count_flops(plain_net(), (3, 8, 8))
    assert count == FlopCount(macs=PLAIN_MACS, params=PLAIN_PARAMS)
    assert count.flops == 2 * PLAIN_MACS
    assert count.to_dict() == {"macs": PLAIN_MACS, "flops": 2 * PLAIN_MACS, "params": PLAIN_PARAMS}


def test_cross_check_with_torch_flop_counter():
    model = plain_net()
    batch = torch.randn(4, 3, 8, 8)
    with FlopCounterMode(display=False) as counter:
        model(batch)
    # FlopCounterMode counts 2 flops per multiply-add for conv and mm, for the whole batch.
    assert count_flops(model, batch).macs * 2 * 4 == counter.get_total_flops()


def test_batch_input_is_divided_by_batch_size():
    model = plain_net()
    assert count_flops(model, torch.zeros(5, 3, 8, 8)).macs == PLAIN_MACS


def test_frozen_parameters_are_counted():
    model = plain_net()
    model[0].weight.requires_grad_(False)
    assert count_flops(model, (3, 8, 8)).params == PLAIN_PARAMS


def test_timm_model_positive_deterministic_and_modes_restored():
    model = timm.create_model("test_resnet", num_classes=10)
    model.train()
    model.fc.eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    first = count_flops(model, (3, 32, 32))
    second = count_flops(model, (3, 32, 32))
    assert first == second
    assert first.macs > 0
    assert first.params == sum(p.numel() for p in model.parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_fvcore_warnings_are_silenced(caplog, recwarn):
    model = timm.create_model("test_resnet", num_classes=10)  # max_pool2d: unsupported by fvcore
    caplog.set_level(logging.WARNING)
    count_flops(model, (3, 32, 32))
    assert not caplog.records
    assert not recwarn.list


def test_wrapped_model_is_unwrapped():
    model = plain_net()
    assert count_flops(nn.DataParallel(model), (3, 8, 8)).macs == PLAIN_MACS


def test_modes_restored_when_tracing_fails():
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:  # runs in eval mode, as count_flops first checks; fails traced
                raise RuntimeError("boom")
            return self.conv(x)

    model = Broken().train()
    with pytest.raises(RuntimeError):
        count_flops(model, (3, 4, 4))
    assert model.training and model.conv.training


@pytest.mark.parametrize("size", [(), (3, 0, 8), (-1, 8, 8)])
def test_bad_input_size_is_user_error(size):
    with pytest.raises(UserError, match="input_size"):
        count_flops(plain_net(), size)


def test_training_flops_formula():
    assert TRAIN_FLOPS_PER_FORWARD_FLOP == 3
    assert training_flops(10**6, 100, epochs=2) == 3 * 2 * 10**6 * 200
    assert training_flops(7, 5) == 3 * 2 * 7 * 5


def test_ledger_hand_example_and_totals():
    ledger = TrainingLedger()
    ledger.add("search", macs_per_sample=10**6, samples=100, epochs=2, seconds=1.5, joules=10.0)
    ledger.add("retrain", macs_per_sample=250_000, samples=100, epochs=4, seconds=2.0, joules=3.0)
    search = ledger.phases["search"]
    assert (search.samples, search.epochs) == (200, 2)
    assert search.training_flops == 3 * 2 * 10**6 * 200
    assert ledger.total_flops == 3 * 2 * (10**6 * 200 + 250_000 * 400)
    assert ledger.total_seconds == pytest.approx(3.5)
    assert ledger.total_joules == pytest.approx(13.0)
    assert list(ledger.phases) == ["search", "retrain"]
    # EB stopped at 2 of 8 dense epochs: the ledger is well below a full dense training.
    dense = TrainingLedger.dense_reference(10**6, 100, 8)
    assert dense == 3 * 2 * 10**6 * 800
    assert ledger.total_flops < dense


def test_ledger_accumulates_per_epoch_adds():
    ledger = TrainingLedger()
    for _ in range(3):
        ledger.add("search", macs_per_sample=1000, samples=50, seconds=1.0, joules=2.0)
    phase = ledger.phases["search"]
    assert (phase.samples, phase.epochs, phase.seconds, phase.joules) == (150, 3, 3.0, 6.0)
    assert ledger.total_flops == training_flops(1000, 50, epochs=3)


def test_ledger_unmeasured_energy_is_none():
    ledger = TrainingLedger()
    assert ledger.total_joules is None
    ledger.add("search", macs_per_sample=1, samples=1, joules=1.0)
    ledger.add("retrain", macs_per_sample=1, samples=1)
    assert ledger.total_joules is None
    ledger.add("search", macs_per_sample=1, samples=1)  # part of the phase unmeasured
    assert ledger.phases["search"].joules is None


def test_ledger_phase_macs_change_is_error():
    ledger = TrainingLedger()
    ledger.add("search", macs_per_sample=100, samples=1)
    with pytest.raises(ValueError, match="search"):
        ledger.add("search", macs_per_sample=99, samples=1)


@pytest.mark.parametrize(
    "bad",
    [{"samples": -1}, {"epochs": 1.5}, {"seconds": float("nan")}, {"joules": -2.0}],
)
def test_ledger_rejects_bad_amounts(bad):
    kwargs = {"macs_per_sample": 1, "samples": 1, **bad}
    with pytest.raises(ValueError):
        TrainingLedger().add("search", **kwargs)


def test_ledger_round_trip_is_exact():
    ledger = TrainingLedger()
    ledger.add("search", macs_per_sample=313_000_000, samples=50_000, epochs=3, seconds=0.1 + 0.2)
    ledger.add("retrain", macs_per_sample=10**12, samples=1_281_167, epochs=90, joules=1 / 3)
    data = json.loads(json.dumps(ledger.to_dict()))
    assert data["total_flops"] == ledger.total_flops
    again = TrainingLedger.from_dict(data)
    assert again.phases == ledger.phases
    assert again.to_dict() == ledger.to_dict()


def test_ledger_from_malformed_dict_is_user_error():
    with pytest.raises(UserError, match="ledger"):
        TrainingLedger.from_dict({"phases": [{"phase": "search"}]})


def test_vgg16_cifar_counts_314_6_m_macs_in_training_mode_without_touching_bn_stats() -> None:
    from ebcompress.models import build_model

    model = build_model("vgg16_cifar", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost = count_flops(model, (3, 32, 32))
    assert round(cost.macs / 1e6, 1) == 314.6
    assert round(count_flops(model, (3, 32, 32), training=False).macs / 1e6, 1) == 313.8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def one_by_one_bn_net() -> nn.Module:
    """Ends in BatchNorm on a 1x1 map at 3x4x4: one value per channel for a batch of one."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 4, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


# 3x4x4: conv 8x4x4x27, BN 5 ops x 8x4x4 (training mode), conv 16x(8x16), BN 5 x 16, fc 16x10.
ONE_BY_ONE_TRAIN_MACS = 8 * 16 * 27 + 5 * 8 * 16 + 16 * 8 * 16 + 5 * 16 + 16 * 10
ONE_BY_ONE_EVAL_MACS = ONE_BY_ONE_TRAIN_MACS - 3 * (8 * 16 + 16)  # BN: 2 ops per element


@pytest.mark.parametrize("model_training", [True, False])
def test_batch_of_one_with_a_1x1_batchnorm_map_is_counted_per_sample(model_training):
    model = one_by_one_bn_net().train(model_training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 4, 4)
    assert count_flops(model, x).macs == ONE_BY_ONE_TRAIN_MACS
    assert count_flops(model, (3, 4, 4)).macs == ONE_BY_ONE_TRAIN_MACS
    assert count_flops(model, torch.cat([x, x])).macs == ONE_BY_ONE_TRAIN_MACS
    assert count_flops(model, x, training=False).macs == ONE_BY_ONE_EVAL_MACS
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training == model_training for m in model.modules())


class BatchIndependentWork(nn.Module):
    """A linear layer on a parameter table, run once per forward whatever the batch (as
    relative-position MLPs do): 5 x 6 x 4 = 120 MACs besides the 1x1 conv's 4 x 4 x 3 = 48."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)
        self.table = nn.Parameter(torch.randn(5, 6))
        self.proj = nn.Linear(6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.proj(self.table).mean(0).view(1, 4, 1, 1)


def test_a_batch_of_one_that_runs_is_not_doubled():
    # Doubling every batch of one would halve the batch-independent 120 MACs (48 + 60).
    assert count_flops(BatchIndependentWork(), torch.randn(1, 3, 2, 2)).macs == 48 + 120


def test_other_training_mode_failures_are_not_retried():
    # a 1x1 map: instance statistics fail in training mode only (eval uses the running ones)
    norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 4), norm)
    with pytest.raises(ValueError, match="spatial element"):
        count_flops(model, torch.randn(1, 3, 4, 4))

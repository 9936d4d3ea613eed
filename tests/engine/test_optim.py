"""Optimisers and schedules from timm: the paper's default is bit-identical to the engine's
earlier hand-written SGD + schedules; every schedule's lrs; exact resume (AdamW + cosine with
warmup, and checkpoints whose schedule state an earlier version wrote)."""

from __future__ import annotations

import bisect
import dataclasses
import math

import pytest
import torch
from test_preemption import StopAt
from test_trainer import OPTIM, assert_same_weights, config, tiny_net, trainer
from torch import nn

from ebcompress.engine.checkpoint import load_checkpoint, save_checkpoint
from ebcompress.engine.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler
from ebcompress.engine.preemption import CheckpointEvery
from ebcompress.errors import UserError

LAST = ("checkpoints", "search", "last.pt")


def previous_factor(schedule: ScheduleConfig, start_epoch: int = 0):
    """The engine's hand-written schedule before timm (ScheduleConfig.factor), verbatim."""

    def factor(step: int) -> float:
        epoch = step + start_epoch
        if schedule.kind == "multistep":
            return schedule.gamma ** bisect.bisect_right(schedule.milestones, epoch)
        if schedule.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, schedule.epochs) / schedule.epochs))
        return 1.0

    return factor


# ----------------------------------------------------------------------------- the default


@pytest.mark.parametrize(
    ("kind", "optim"),
    [
        ("multistep", OPTIM),
        ("cosine", OptimConfig(lr=0.05, momentum=0.8, weight_decay=5e-4, nesterov=True)),
        ("constant", OptimConfig(lr=0.05, momentum=0.0, weight_decay=0.0)),
    ],
)
def test_the_default_is_bit_identical_to_torch_sgd_with_the_previous_schedule(kind, optim):
    cfg = dataclasses.replace(
        config(3, (1, 2)), optim=optim, schedule=ScheduleConfig(3, kind, (1, 2))
    )
    timm_run = trainer(cfg=cfg)
    timm_run.fit()

    by_hand = trainer(cfg=cfg)  # the same model, data and seed; optimiser and schedule swapped
    params = [p for p in by_hand.model.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(
        params,
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov,
    )
    by_hand.prepared.optimizer = sgd
    by_hand.prepared.scheduler = torch.optim.lr_scheduler.LambdaLR(
        sgd, previous_factor(cfg.schedule)
    )
    by_hand.fit()

    assert_same_weights(timm_run.model, by_hand.model)
    assert [s.lr for s in timm_run.history] == [s.lr for s in by_hand.history]  # exact floats
    assert type(timm_run.optimizer) is torch.optim.SGD
    (ours,), (theirs,) = timm_run.optimizer.param_groups, sgd.param_groups
    assert {k: v for k, v in ours.items() if k != "params"} == {
        k: v for k, v in theirs.items() if k != "params"
    }
    assert all(a is b for a, b in zip(ours["params"], timm_run.model.parameters(), strict=True))


def test_the_default_optimizer_decays_every_parameter_and_is_not_nesterov():
    model = tiny_net()
    (group,) = build_optimizer(model, OptimConfig()).param_groups  # timm's "sgd" is Nesterov
    assert len(group["params"]) == len(list(model.parameters()))  # BN scales included
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert group["nesterov"] is False
    optim = OptimConfig(lr=0.05, momentum=0.8, weight_decay=5e-4, nesterov=True)
    (group,) = build_optimizer(model, optim).param_groups
    assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (5e-4, 0.8, True)


# ----------------------------------------------------------------------------- other optimisers


def test_timm_optimizers_by_name_with_their_arguments():
    model = tiny_net()
    model[0].weight.requires_grad_(False)
    adamw = OptimConfig(lr=1e-3, weight_decay=0.05, name="adamw", kwargs={"betas": [0.8, 0.9]})
    optimizer = build_optimizer(model, adamw)
    assert type(optimizer) is torch.optim.AdamW
    (group,) = optimizer.param_groups
    assert (group["lr"], group["weight_decay"], group["betas"]) == (1e-3, 0.05, (0.8, 0.9))
    assert len(group["params"]) == len(list(model.parameters())) - 1  # the frozen one left out
    assert type(build_optimizer(model, OptimConfig(name="lamb"))).__name__ == "Lamb"


def test_filter_bias_and_bn_takes_the_decay_off_every_1d_parameter():
    model = tiny_net()
    groups = build_optimizer(model, OptimConfig(name="adamw", filter_bias_and_bn=True)).param_groups
    decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    bn, conv, linear = model[1], model[0], model[6]
    assert decay[0.0] == {id(bn.weight), id(bn.bias), id(linear.bias)}
    assert decay[1e-4] == {id(conv.weight), id(linear.weight)}


@pytest.mark.parametrize(
    ("optim", "expected"),
    [
        (OptimConfig(name="adamx"), "train.optimizer 'adamx' .* cannot be built: .*not found"),
        (OptimConfig(name="adamw", kwargs={"betaz": 1}), "unexpected keyword argument 'betaz'"),
        (OptimConfig(name="adamw", nesterov=True), "train.nesterov applies to optimizer 'sgd'"),
    ],
)
def test_an_optimizer_timm_refuses_is_a_one_line_user_error(optim, expected):
    with pytest.raises(UserError, match=expected) as info:
        build_optimizer(tiny_net(), optim)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- schedules


def lrs(schedule: ScheduleConfig, lr: float, start_epoch: int = 0) -> list[float]:
    optimizer = build_optimizer(nn.Linear(2, 2), OptimConfig(lr=lr))
    scheduler = build_scheduler(optimizer, schedule, start_epoch)
    out = []
    for _ in range(start_epoch, schedule.epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_multistep_decays_at_milestones_as_torch_does():
    schedule = ScheduleConfig(10, milestones=(4, 7), gamma=0.1)
    assert lrs(schedule, 0.1) == pytest.approx([0.1] * 4 + [0.01] * 3 + [0.001] * 3)


def test_step_cosine_constant_and_warmup():
    assert lrs(ScheduleConfig(7, "step", decay_epochs=3, gamma=0.5), 0.1) == pytest.approx(
        [0.1] * 3 + [0.05] * 3 + [0.025]
    )
    cosine = [0.1 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert lrs(ScheduleConfig(4, "cosine"), 0.2) == pytest.approx(cosine)
    assert lrs(ScheduleConfig(3, "constant"), 0.05) == pytest.approx([0.05] * 3)
    # timm's linear warmup from warmup_lr (at epoch index 0), then cosine down to min_lr
    warm = ScheduleConfig(6, "cosine", warmup_epochs=2, warmup_lr=0.01, min_lr=0.001)
    tail = [0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * e / 6)) for e in range(2, 6)]
    assert lrs(warm, 0.1) == pytest.approx([0.01, 0.055, *tail])
    assert lrs(ScheduleConfig(4, "multistep", (3,), warmup_epochs=2, warmup_lr=0.0), 0.1) == (
        pytest.approx([0.0, 0.05, 0.1, 0.01])
    )


@pytest.mark.parametrize(
    "schedule",
    [
        ScheduleConfig(8, "multistep", (3, 6)),
        ScheduleConfig(8, "step", decay_epochs=2),
        ScheduleConfig(8, "cosine", warmup_epochs=6, min_lr=1e-3),
        ScheduleConfig(8, "constant", warmup_epochs=7),
    ],
)
def test_start_epoch_continues_the_schedule(schedule):
    full = lrs(schedule, 0.1)
    assert lrs(schedule, 0.1, start_epoch=5) == full[5:]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: ScheduleConfig(4, kind="plateau"), "schedule 'plateau' is not known; use one"),
        (lambda: ScheduleConfig(4, kind="step"), "every decay_epochs epochs; set train.decay"),
        (lambda: ScheduleConfig(4, warmup_epochs=4), r"warmup_epochs=4 must lie in \[0, epochs"),
    ],
)
def test_a_bad_schedule_is_a_one_line_user_error(make, expected):
    with pytest.raises(UserError, match=expected) as info:
        make()
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- resume


ADAMW = OptimConfig(lr=3e-3, weight_decay=0.05, name="adamw", kwargs={"betas": (0.9, 0.99)})
WARM_COSINE = ScheduleConfig(4, "cosine", warmup_epochs=2, warmup_lr=1e-4, min_lr=1e-5)


def test_adamw_with_a_warm_cosine_resumes_bit_exactly_inside_and_between_epochs(tmp_path):
    cfg = dataclasses.replace(
        config(), optim=ADAMW, schedule=WARM_COSINE, checkpoint_every=CheckpointEvery(steps=2)
    )
    straight = trainer(cfg=cfg, run_dir=tmp_path / "a")
    straight.fit()

    run = tmp_path / "b"
    with pytest.raises(RuntimeError, match="crash"):  # epoch 2 (warmup), step 3 of 4
        trainer(cfg=cfg, run_dir=run, callbacks=[StopAt(7)]).fit()
    saved = load_checkpoint(run.joinpath(*LAST))
    assert saved["scheduler"] == {"epoch": 1, "base_lrs": [3e-3]}
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(saved["optimizer"]["state"].values())))
    trainer(model=tiny_net(seed=7), cfg=cfg, run_dir=run, end_epoch=3).fit(resume=True)
    torch.manual_seed(5)
    resumed = trainer(model=tiny_net(seed=8), cfg=cfg, run_dir=run)
    history = resumed.fit(resume=True)

    assert_same_weights(straight.model, resumed.model)
    assert [s.lr for s in history] == [s.lr for s in straight.history]
    assert [s.train_loss for s in history] == [s.train_loss for s in straight.history]
    assert history[0].lr == 1e-4 and history[1].lr == pytest.approx(1e-4 + (3e-3 - 1e-4) / 2)


def test_a_new_base_lr_on_resume_rebases_the_warmup_too(tmp_path):
    schedule = ScheduleConfig(4, "cosine", warmup_epochs=2, warmup_lr=0.0)
    cfg = dataclasses.replace(config(), schedule=schedule)
    trainer(cfg=cfg, run_dir=tmp_path, end_epoch=1).fit()
    higher = dataclasses.replace(OPTIM, lr=0.2)
    history = trainer(cfg=cfg, optim=higher, run_dir=tmp_path).fit(resume=True)
    cosine = [0.1 * (1 + math.cos(math.pi * e / 4)) for e in (2, 3)]
    assert [s.lr for s in history] == pytest.approx([0.0, 0.1, *cosine])


@pytest.mark.parametrize("start_epoch", [0, 1])
def test_a_checkpoint_with_the_previous_lambdalr_state_resumes_exactly(tmp_path, start_epoch):
    cfg = config(3, (2,), start_epoch=start_epoch)
    straight = trainer(cfg=cfg, run_dir=tmp_path / "a")
    straight.fit()

    run = tmp_path / "b"
    trainer(cfg=cfg, run_dir=run, end_epoch=start_epoch + 1).fit()
    path = run.joinpath(*LAST)
    saved = load_checkpoint(path)
    # What the hand-written engine saved after one epoch: LambdaLR's state, stepped once.
    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=OPTIM.lr)
    old = torch.optim.lr_scheduler.LambdaLR(sgd, previous_factor(cfg.schedule, start_epoch))
    sgd.step()
    old.step()
    legacy = old.state_dict()
    assert legacy["lr_lambdas"] == [None] and legacy["last_epoch"] == 1
    save_checkpoint(saved | {"scheduler": legacy}, path)

    resumed = trainer(model=tiny_net(seed=7), cfg=cfg, run_dir=run)
    history = resumed.fit(resume=True)
    assert_same_weights(straight.model, resumed.model)
    assert [s.lr for s in history] == [s.lr for s in straight.history]

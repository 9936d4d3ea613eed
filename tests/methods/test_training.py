"""build_trainer: the shell's one translation of a recipe into the engine's own configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ebcompress.data import fake_data
from ebcompress.engine.config import EmaConfig, TrainerConfig
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.preemption import CheckpointEvery
from ebcompress.methods.base import RetrainPlan
from ebcompress.methods.training import build_trainer, retrain_schedule
from ebcompress.recipe import Recipe, TrainConfig

# Every recipe.train field and a value other than its default, so none can be dropped silently.
TRAIN = {
    "epochs": 8,
    "batch_size": 8,
    "optimizer": "sgd",  # the default: nesterov is sgd's alone (adamw: its own test below)
    "optimizer_kwargs": {"foreach": False},
    "lr": 0.2,
    "momentum": 0.8,
    "weight_decay": 5e-4,
    "filter_bias_and_bn": True,
    "nesterov": True,
    "schedule": "cosine",
    "milestones": [4, 6],
    "gamma": 0.5,
    "decay_epochs": 3,
    "warmup_epochs": 2,
    "warmup_lr": 1e-3,
    "min_lr": 1e-4,
    "precision": "bf16",
    "channels_last": True,
    "sync_bn": True,
    "label_smoothing": 0.1,
    "checkpoint_every": "30min",
    "ema": {"decay": 0.99, "warmup": True, "warmup_power": 0.75},
}


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def recipe(**retrain: object) -> Recipe:
    return Recipe(seed=3, train=TRAIN, retrain=retrain)


def build(recipe: Recipe, **kwargs: object):
    data = fake_data(image_size=8, n_train=16, n_test=8, num_classes=3)
    return build_trainer(tiny_net(), data, recipe, "phase", device="cpu", progress=False, **kwargs)


def test_every_train_field_reaches_the_engine_config(tmp_path) -> None:
    assert set(TRAIN) == set(TrainConfig.model_fields)
    trainer = build(recipe(), run_dir=tmp_path, macs_per_sample=7, end_epoch=5)
    assert trainer.config == TrainerConfig(
        phase="phase",
        batch_size=8,
        optim=OptimConfig(
            lr=0.2,
            momentum=0.8,
            weight_decay=5e-4,
            nesterov=True,
            kwargs={"foreach": False},
            filter_bias_and_bn=True,
        ),
        schedule=ScheduleConfig(8, "cosine", (4, 6), 0.5, 3, 2, 1e-3, 1e-4),
        end_epoch=5,
        precision="bf16",
        channels_last=True,
        sync_bn=True,
        label_smoothing=0.1,
        checkpoint_every=CheckpointEvery(seconds=1800.0),
        ema=EmaConfig(decay=0.99, warmup=True, warmup_power=0.75),
        device="cpu",
        seed=3,
        run_dir=tmp_path,
        progress=False,
        macs_per_sample=7,
    )


def test_a_retrain_plan_sets_window_lr_precision_and_callbacks() -> None:
    mask, extra = object(), object()
    plan = RetrainPlan(start_epoch=2, end_epoch=4, callbacks=[mask])
    trainer = build(recipe(lr=0.03, precision="fp32"), plan=plan, callbacks=[extra])
    config = trainer.config
    assert (config.start_epoch, config.end_epoch, config.final_epoch) == (2, 4, 4)
    assert config.schedule == ScheduleConfig(4, "cosine", (2, 3), 0.5, 2, 1, 1e-3, 1e-4)
    assert (config.optim.lr, config.precision) == (0.03, "fp32")
    assert trainer.callbacks[:2] == [mask, extra] and len(trainer.callbacks) == 3

    planned_lr = RetrainPlan(start_epoch=0, end_epoch=8, lr=0.07)
    assert build(recipe(lr=0.03), plan=planned_lr).config.optim.lr == 0.07
    assert build(recipe(), plan=planned_lr).config.schedule.epochs == 8
    assert build(recipe(), plan=RetrainPlan(0, 8)).config.optim.lr == 0.2  # train.lr
    with pytest.raises(ValueError, match="plan sets the end epoch"):
        build(recipe(), plan=plan, end_epoch=3)


def test_a_window_scales_the_milestones_onto_its_epochs() -> None:
    train = TrainConfig(epochs=160, milestones=[80, 120])
    assert retrain_schedule(train, 160) is train
    assert retrain_schedule(train, 40).milestones == [20, 30]
    assert retrain_schedule(TrainConfig(epochs=10, milestones=[1, 9]), 2).milestones == [1]


def test_a_window_scales_the_step_interval_and_the_warmup_too() -> None:
    train = TrainConfig(epochs=160, schedule="step", decay_epochs=30, warmup_epochs=5)
    window = retrain_schedule(train, 40)
    assert (window.decay_epochs, window.warmup_epochs, window.milestones) == (8, 1, [20, 30])
    short = retrain_schedule(TrainConfig(epochs=10, milestones=[], warmup_epochs=9), 2)
    assert (short.warmup_epochs, short.decay_epochs) == (1, None)  # one epoch left after it
    assert retrain_schedule(TrainConfig(epochs=10, milestones=[]), 5).warmup_epochs == 0


def test_the_optimizer_name_and_its_arguments_reach_the_engine() -> None:
    train = {"optimizer": "adamw", "optimizer_kwargs": {"betas": [0.8, 0.9]}, "lr": 1e-3}
    trainer = build(Recipe(train={"epochs": 2, "milestones": [1], **train}))
    optim = trainer.config.optim
    assert (optim.name, optim.kwargs, optim.lr, optim.nesterov) == (
        "adamw", {"betas": [0.8, 0.9]}, 1e-3, False,
    )  # fmt: skip
    assert type(trainer.optimizer) is torch.optim.AdamW
    assert trainer.optimizer.param_groups[0]["betas"] == (0.8, 0.9)

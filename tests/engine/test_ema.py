"""``train.ema``: timm's ModelEmaV3 beside the live weights, evaluated, checkpointed, resumed
bit-exactly, and invisible to the live training (and so to the Early-Bird mask)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from test_preemption import STEPS, StopAt
from test_trainer import CHECKPOINT_KEYS, assert_same_weights, config, tiny_net, trainer
from torch import nn

from ebcompress.earlybird import EarlyBird
from ebcompress.engine.checkpoint import load_checkpoint
from ebcompress.engine.config import EmaConfig
from ebcompress.engine.preemption import CheckpointEvery
from ebcompress.engine.state import TrainerState
from ebcompress.engine.stats import EpochStats
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe

EMA = EmaConfig(decay=0.9)
LAST = ("checkpoints", "search", "last.pt")
# Per-epoch values that must match exactly (seconds and images_per_s are wall-clock).
LIVE = ("epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5")


def live(history: list[EpochStats]) -> list[tuple]:
    return [tuple(getattr(s, k) for k in LIVE) for s in history]


class Weights:
    """Records the parameters before every step (= after the one before; the buffers have
    moved on with this step's forward already), for the expected EMA."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def after_backward(self, model) -> None:
        self.seen.append({k: v.detach().clone() for k, v in model.named_parameters()})


def test_the_ema_is_timms_average_of_the_live_weights_after_every_step():
    recorder = Weights()
    run = trainer(cfg=config(1), ema=EMA, callbacks=[recorder])
    run.fit()
    final = {k: v.detach() for k, v in run.model.named_parameters()}
    after = [*recorder.seen[1:], final]  # the parameters after steps 1..4
    assert len(after) == STEPS
    expected = dict(after[0])  # the first update copies
    for weights in after[1:]:
        expected = {key: 0.9 * expected[key] + 0.1 * value for key, value in weights.items()}
    got = dict(run.ema_model.named_parameters())
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(got["0.weight"], final["0.weight"])
    # BatchNorm statistics are averaged too; the step counter is copied.
    ema_bn, live_bn = run.ema_model[1], run.model[1]
    assert not torch.equal(ema_bn.running_mean, live_bn.running_mean)
    assert torch.equal(ema_bn.num_batches_tracked, live_bn.num_batches_tracked)
    stats = run.history[-1]
    assert stats.ema_test_top1 == run.loop.evaluate(run.ema_model)["top1"]
    assert "EMA top-1" in stats.summary(1)


def test_a_decay_near_0_evaluates_as_the_live_model():
    run = trainer(ema=EmaConfig(1e-12))
    history = run.fit()
    assert [s.ema_test_top1 for s in history] == [s.test_top1 for s in history]
    for key, value in run.ema_model.state_dict().items():
        torch.testing.assert_close(value, run.model.state_dict()[key])


def test_ema_leaves_the_live_training_and_the_files_of_a_run_without_it_unchanged(tmp_path):
    plain = trainer(run_dir=tmp_path / "plain")
    plain.fit()
    averaged = trainer(run_dir=tmp_path / "ema", ema=EMA)
    averaged.fit()
    assert_same_weights(plain.model, averaged.model)
    assert live(plain.history) == live(averaged.history)
    assert all(s.ema_test_top1 is None for s in plain.history)
    assert all(s.ema_test_top1 is not None for s in averaged.history)
    assert plain.ema_model is None
    # Without EMA: the checkpoint keys and metrics lines of earlier versions, nothing added.
    assert set(load_checkpoint(tmp_path.joinpath("plain", *LAST))) == CHECKPOINT_KEYS
    assert set(load_checkpoint(tmp_path.joinpath("ema", *LAST))) == CHECKPOINT_KEYS | {"ema"}
    lines = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert all("ema_test_top1" not in line for line in lines)


def test_an_old_metrics_line_reads_without_the_ema_field():
    line = trainer().fit()[0].to_dict()
    assert "ema_test_top1" not in line
    assert EpochStats.from_dict(line).ema_test_top1 is None
    with pytest.raises(KeyError):
        EpochStats.from_dict({k: v for k, v in line.items() if k != "test_top1"})


def test_the_ema_round_trips_through_a_checkpoint_and_resumes_bit_exactly(tmp_path):
    straight = trainer(run_dir=tmp_path / "a", ema=EMA)
    straight.fit()

    trainer(run_dir=tmp_path / "b", ema=EMA, end_epoch=1).fit()
    where = tmp_path.joinpath("b", *LAST)
    saved = load_checkpoint(where)  # weights_only
    state = TrainerState.from_checkpoint(saved, phase="search", start_epoch=0, where=where)
    assert state.ema is not None and state.to_checkpoint().keys() == saved.keys()
    torch.manual_seed(123)
    resumed = trainer(model=tiny_net(seed=7), run_dir=tmp_path / "b", ema=EMA)
    history = resumed.fit(resume=True)

    assert_same_weights(straight.model, resumed.model)
    assert_same_weights(straight.ema_model, resumed.ema_model)
    assert [s.ema_test_top1 for s in history] == [s.ema_test_top1 for s in straight.history]


def test_the_ema_resumes_bit_exactly_from_inside_an_epoch(tmp_path):
    cfg = config(checkpoint_every=CheckpointEvery(steps=2), ema=EmaConfig(0.8, warmup=True))
    straight = trainer(cfg=cfg, run_dir=tmp_path / "a")
    straight.fit()
    with pytest.raises(RuntimeError, match="crash"):  # epoch 2, step 3: saved after step 2
        trainer(cfg=cfg, run_dir=tmp_path / "b", callbacks=[StopAt(7)]).fit()
    resumed = trainer(model=tiny_net(seed=7), cfg=cfg, run_dir=tmp_path / "b")
    history = resumed.fit(resume=True)
    assert_same_weights(straight.model, resumed.model)
    assert_same_weights(straight.ema_model, resumed.ema_model)
    assert [s.ema_test_top1 for s in history] == [s.ema_test_top1 for s in straight.history]


def test_a_checkpoint_without_ema_resumes_with_one_started_from_its_weights(tmp_path, capsys):
    trainer(run_dir=tmp_path, end_epoch=1).fit()
    history = trainer(run_dir=tmp_path, ema=EMA).fit(resume=True)
    assert (
        "the checkpoint has no EMA; it starts from the resumed weights" in capsys.readouterr().out
    )
    assert history[0].ema_test_top1 is None and history[1].ema_test_top1 is not None


def test_the_early_bird_mask_is_drawn_from_the_live_model_whatever_the_ema():
    def masks(ema: EmaConfig | None) -> tuple[dict, list[int], list]:
        model = tiny_net()
        bird = EarlyBird(model, torch.zeros(1, 3, 8, 8), 0.5, window=2, num_classes=4)
        trainer(model=model, cfg=config(3, (2,)), ema=ema, callbacks=[bird]).fit()
        epochs = bird.history.epochs(0.5)
        drawn = [bird.history.mask(0.5, e).tolist() for e in epochs]
        return bird.latest_ticket().to_dict(), epochs, drawn

    plain, averaged = masks(None), masks(EmaConfig(0.5))
    assert plain == averaged
    assert plain[1] == [1, 2, 3] and len(plain[2][0]) == 8  # a mask per epoch in the window


@pytest.mark.parametrize("decay", ["0", "1", "1.5", "-0.1"])
def test_the_recipe_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(UserError, match="train.ema.decay"):
        load_recipe("quickstart", [f"train.ema={{decay: {decay}}}"])
    with pytest.raises(UserError, match=r"train.ema.decay .* must lie in \(0, 1\)"):
        EmaConfig(float(decay))


def test_the_recipe_section_and_its_unknown_keys():
    recipe = load_recipe("quickstart", ["train.ema={decay: 0.9998}"])
    assert recipe.train.ema is not None and recipe.train.ema.decay == 0.9998
    assert not recipe.train.ema.warmup
    assert load_recipe("quickstart").train.ema is None
    with pytest.raises(UserError, match="train.ema.beta"):
        load_recipe("quickstart", ["train.ema={decay: 0.99, beta: 2}"])
    with pytest.raises(UserError, match="train.ema.decay"):
        load_recipe("quickstart", ["train.ema={warmup: true}"])


def test_build_trainer_passes_the_section_to_the_engine():
    from ebcompress.data import fake_data
    from ebcompress.methods.training import build_trainer

    recipe = load_recipe("quickstart", ["train.ema={decay: 0.99, warmup: true}"])
    data = fake_data(image_size=8, n_train=16, n_test=8, num_classes=4)
    built = build_trainer(tiny_net(), data, recipe, "search", device="cpu", progress=False)
    assert built.config.ema == EmaConfig(0.99, warmup=True)
    assert built.prepared.ema is not None and built.prepared.ema.use_warmup


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from test_distributed import CLASSES, N_TEST, N_TRAIN
    from test_distributed import config as ddp_config
    from test_distributed import tiny_net as ddp_net

    from ebcompress.data import fake_data
    from ebcompress.engine import distributed
    from ebcompress.engine.trainer import Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        data = fake_data(image_size=8, n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES)
        cfg = dataclasses.replace(ddp_config(run_dir=out_dir), ema=EMA)
        run = Trainer(ddp_net(), data, cfg)
        (stats,) = run.fit()
        assert type(run.ema_model) is nn.Sequential  # the unwrapped module, not DDP
        torch.save(run.ema_model.state_dict(), f"{out_dir}/ema{rank}.pt")
        with open(f"{out_dir}/stats{rank}.json", "w") as handle:
            json.dump(stats.to_dict(), handle)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_keep_the_same_ema_and_reduce_its_accuracy(tmp_path):
    from test_distributed import CLASSES, N_TEST, N_TRAIN, _free_port
    from test_distributed import config as ddp_config
    from test_distributed import tiny_net as ddp_net

    from ebcompress.data import fake_data
    from ebcompress.engine.trainer import Trainer

    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    averages = [torch.load(tmp_path / f"ema{r}.pt", weights_only=True) for r in range(2)]
    for key in averages[0]:  # BatchNorm statistics included: averaged over the ranks
        assert torch.equal(averages[0][key], averages[1][key]), key
    stats = [json.loads((tmp_path / f"stats{r}.json").read_text()) for r in range(2)]
    assert stats[0]["ema_test_top1"] == stats[1]["ema_test_top1"]
    model = ddp_net()
    model.load_state_dict(averages[0])
    data = fake_data(image_size=8, n_train=N_TRAIN, n_test=N_TEST, num_classes=CLASSES)
    assert stats[0]["ema_test_top1"] == Trainer(model, data, ddp_config("check")).evaluate()["top1"]

"""8-bit block floating point: the quantiser's exact bounds, stochastic rounding, and training."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.modules import module as module_hooks

from ebcompress.data import fake_data
from ebcompress.engine import distributed
from ebcompress.engine.bfp8 import (
    BlockFloat8,
    block_quantize,
    block_step,
    quantize_activation,
    quantized_layers,
)
from ebcompress.engine.checkpoint import load_checkpoint
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.precision import precision_policy
from ebcompress.engine.trainer import Trainer
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.run.pipeline import run_pipeline

LIMIT = 127  # largest 8-bit mantissa


def on_grid(x: torch.Tensor) -> bool:
    """True when every entry of ``x`` is BFP8-representable (rounding it changes nothing)."""
    return torch.equal(block_quantize(x, rounding="nearest"), x)


def sample(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Normal values whose rows span magnitudes from 1e-30 to 1e30."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    scales = 10.0 ** torch.randint(-30, 31, (shape[0],), generator=gen).float()
    return x * scales.reshape(-1, *[1] * (len(shape) - 1))


# ----------------------------------------------------------------------------- the quantiser


@pytest.mark.parametrize("shape", [(16, 3, 5, 5), (10, 33), (64,), ()])
@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_is_within_half_a_step_below_the_clip(shape, seed) -> None:
    x = sample(shape, seed) if shape else torch.tensor(-3.7)
    q = block_quantize(x, rounding="nearest")
    step = block_step(x)
    mantissa = q / step
    assert torch.equal(mantissa, mantissa.round()) and mantissa.abs().max() <= LIMIT
    error = (q - x).abs() / step
    below_clip = x.abs() / step <= LIMIT + 0.5
    assert (error[below_clip] <= 0.5).all()
    assert (error < 1).all()
    # The shared exponent: the block's largest magnitude lies in [64, 128) steps.
    scaled = x.abs() / step
    largest = scaled.reshape(x.shape[0], -1).amax(1) if x.dim() > 1 else scaled.max()
    assert ((largest >= 64) & (largest < 128)).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_stochastic_lands_on_a_neighbouring_grid_point(seed) -> None:
    x = sample((16, 40), seed)
    q = block_quantize(x, generator=torch.Generator().manual_seed(seed))
    step = block_step(x)
    scaled = x / step
    mantissa = q / step
    assert ((mantissa == scaled.floor()) | (mantissa == scaled.ceil().clamp(max=LIMIT))).all()
    assert ((q - x).abs() < step).all()


def test_stochastic_rounding_is_unbiased() -> None:
    draws = 20_000
    # One block per row; the row's first entry fixes the exponent (step = 2**-6).
    row = torch.tensor([1.0, 0.3, -0.3337, 0.51234, 1e-3, -0.9999, 1.98])
    q = block_quantize(
        row.expand(draws, -1).contiguous(), generator=torch.Generator().manual_seed(0)
    )
    step = block_step(row.expand(2, -1))[0].item()
    assert step == 2.0**-6  # largest magnitude 1.98: E = 0, step = 2**(E - 6)
    mean = q.mean(dim=0)
    # Each draw is off by < 1 step with variance <= step**2 / 4.
    tolerance = 5 * step / (2 * math.sqrt(draws))
    assert torch.allclose(mean, row, atol=tolerance, rtol=0)


def test_stochastic_rounds_up_with_the_fractional_probability() -> None:
    step = 2.0**-6
    row = torch.tensor([1.0, 0.25 * step, 10.75 * step])
    q = block_quantize(
        row.expand(40_000, -1).contiguous(), generator=torch.Generator().manual_seed(1)
    )
    up_small = (q[:, 1] > 0).float().mean().item()
    up_large = (q[:, 2] == 11 * step).float().mean().item()
    assert abs(up_small - 0.25) < 0.01 and abs(up_large - 0.75) < 0.01
    assert set((q[:, 2] / step).unique().tolist()) == {10.0, 11.0}


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_quantising_twice_changes_nothing(rounding) -> None:
    x = sample((8, 3, 4, 4), 3)
    once = block_quantize(x, rounding=rounding)
    assert torch.equal(block_quantize(once, rounding=rounding), once)


def test_zeros_nan_and_inf() -> None:
    x = torch.tensor(
        [[0.0, -0.0, 0.0], [float("nan"), 1.3, 0.01], [float("inf"), -float("inf"), 3.0]]
    )
    q = block_quantize(x, rounding="nearest")
    assert torch.equal(q[0], torch.zeros(3))
    assert math.isnan(q[1, 0]) and q[2, 0] == math.inf and q[2, 1] == -math.inf
    # Non-finite entries do not set their block's exponent: the finite ones keep 7 bits.
    assert q[1, 1] == pytest.approx(1.3, abs=2.0**-7) and q[2, 2] == 3.0
    assert block_quantize(torch.zeros(0, 3)).shape == (0, 3)


def test_blocks_are_rows_and_a_vector_is_one_block() -> None:
    x = torch.tensor([[1000.0, 1.0], [0.001, 0.003]])
    q = block_quantize(x, rounding="nearest")
    assert q[0, 1] == 0.0  # 1 is below half a step of the block holding 1000
    assert q[1, 1] == pytest.approx(0.003, rel=2**-6)  # its own exponent keeps it
    vector = block_quantize(torch.tensor([1000.0, 1.0]), rounding="nearest")
    assert vector[1] == 0.0
    whole = block_quantize(x, rounding="nearest", block_dim=None)
    assert whole[1].eq(0).all()


def test_dtype_and_tiny_blocks() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    assert block_quantize(x).dtype == torch.bfloat16
    tiny = torch.tensor([1e-40, 3e-39])  # subnormal: rounded on the 2**-126 grid
    assert torch.isfinite(block_quantize(tiny)).all()


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="rounding 'up'"):
        block_quantize(torch.ones(2), rounding="up")
    with pytest.raises(UserError, match="bits=1"):
        block_quantize(torch.ones(2), bits=1)


# ----------------------------------------------------------------------------- activations, errors


def test_activation_and_error_are_quantised() -> None:
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(5)).requires_grad_()
    y = quantize_activation(x, training=False)
    assert on_grid(y.detach()) and torch.equal(y.detach(), block_quantize(x, rounding="nearest"))
    grad = torch.randn(4, 10) * 1e-3
    y.backward(grad)
    assert on_grid(x.grad) and not on_grid(grad)
    assert ((x.grad - grad).abs() < block_step(grad)).all()


def test_layer_hooks_act_inside_the_context_only() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(4, 6)
    hooks_before = (
        len(module_hooks._global_forward_pre_hooks),
        len(module_hooks._global_forward_hooks),
    )
    with quantized_layers():
        inside = net(x)
    assert on_grid(inside) and not torch.equal(inside, net(x))
    assert not on_grid(net(x))
    assert hooks_before == (
        len(module_hooks._global_forward_pre_hooks),
        len(module_hooks._global_forward_hooks),
    )


# ----------------------------------------------------------------------------- training


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def config(epochs: int, run_dir=None, end_epoch: int | None = None) -> TrainerConfig:
    return TrainerConfig(
        phase="search", batch_size=8, optim=OptimConfig(lr=0.05), schedule=ScheduleConfig(epochs),
        end_epoch=end_epoch, precision="bfp8", run_dir=run_dir, progress=False,
    )  # fmt: skip


def trainer(epochs: int, run_dir=None, end_epoch: int | None = None) -> Trainer:
    torch.manual_seed(0)
    data = fake_data(image_size=8, n_train=48, n_test=16, num_classes=4)
    return Trainer(tiny_net(), data, config(epochs, run_dir, end_epoch))


def test_bfp8_is_registered() -> None:
    assert isinstance(precision_policy("bfp8", torch.device("cpu")), BlockFloat8)
    with pytest.raises(UserError, match="precision 'int4' is not one of fp32"):
        precision_policy("int4", torch.device("cpu"))


def test_training_keeps_weights_and_momentum_in_bfp8() -> None:
    run = trainer(epochs=1)
    (stats,) = run.fit()
    assert math.isfinite(stats.train_loss)
    for param in run.model.parameters():
        assert on_grid(param.detach())
        assert on_grid(run.optimizer.state[param]["momentum_buffer"])


def test_resume_under_bfp8_is_bit_exact(tmp_path) -> None:
    straight = trainer(epochs=2)
    straight.fit()
    trainer(epochs=2, run_dir=tmp_path, end_epoch=1).fit()  # stops after epoch 1, as if killed
    resumed = trainer(epochs=2, run_dir=tmp_path)
    resumed.fit(resume=True)
    expected, found = straight.model.state_dict(), resumed.model.state_dict()
    for key in expected:
        assert torch.equal(expected[key], found[key]), key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )  # fmt: skip
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    try:
        data = fake_data(image_size=8, n_train=48, n_test=16, num_classes=4)
        net = tiny_net()
        torch.manual_seed(100 + rank)  # each rank's own seed: only rank 0's may round weights
        run = Trainer(net, data, config(1))
        run.fit()
        torch.save(run.model.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_ranks_round_replicated_tensors_identically(tmp_path) -> None:
    mp.start_processes(
        _ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert on_grid(weights[0]["0.weight"])


def test_lf_and_ll_recipes() -> None:
    lf, ll = load_recipe("vgg16_cifar10_p30_lf"), load_recipe("vgg16_cifar10_p30_ll")
    assert (lf.train.precision, lf.retrain.precision) == ("bfp8", "fp32")
    assert (ll.train.precision, ll.retrain.precision) == ("bfp8", "bfp8")
    assert lf.model.name == ll.model.name == "vgg16_cifar" and lf.prune.ratio == 0.3


@pytest.mark.slow
def test_bfp8_search_on_quickstart_still_draws_a_ticket(tmp_path) -> None:
    tiny = [
        "train.epochs=8",
        "train.milestones=[4,6]",
        "train.batch_size=32",
        "data.train_subset=256",
        "data.test_subset=64",
        "prune.window=2",
        "prune.watch_ratios=[]",
        "train.precision=bfp8",
    ]
    report = run_pipeline(load_recipe("quickstart", tiny), tmp_path / "lf", progress=False)
    assert report["ticket"]["emerged"] is True and report["ticket"]["epoch"] < 8
    search = load_checkpoint(tmp_path / "lf" / "checkpoints" / "search" / "last.pt")
    retrain = load_checkpoint(tmp_path / "lf" / "checkpoints" / "retrain" / "last.pt")
    convs = [k for k in search["model"] if k.endswith("weight") and search["model"][k].dim() == 4]
    assert all(on_grid(search["model"][k]) for k in convs)  # searched in BFP8
    assert not all(on_grid(retrain["model"][k]) for k in convs)  # retrained in fp32
    assert 0.25 < report["accuracy"]["test_top1"] <= 1.0

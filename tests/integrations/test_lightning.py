"""EarlyBirdCallback in real Lightning fits on CPU: a tiny conv-BN net on learnable images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")  # the `lightning` extra; `make install` installs it

from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402

from ebcompress.cost.flops import count_flops  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.integrations.lightning import EarlyBirdCallback  # noqa: E402

EXAMPLE = torch.zeros(1, 3, 12, 12)
SEARCH = {"ratio": 0.25, "sparsity": 5e-3, "window": 3, "num_classes": 4}


def _tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


class Classifier(L.LightningModule):
    """The network as ``self.net``; logs the epoch's training top-1 and loss; keeps the BN
    gradients the optimizer is about to use (its hook runs after the callbacks')."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = _tiny_net()
        with torch.no_grad():  # distinct scales: the first masks are meaningful
            for module in self.net:
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.0)
        self.bn_grads: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        top1 = (logits.argmax(1) == y).float().mean()
        self.log("train_top1", top1, on_step=True, on_epoch=True)  # read as train_top1_epoch
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.bn_grads.append(self.net[1].weight.grad.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loader() -> DataLoader:
    """128 images of 4 classes (a per-class channel offset plus noise), in a fixed order."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(128) % 4
    images = torch.randn(128, 3, 12, 12, generator=generator)
    images[:, 0] += labels.view(-1, 1, 1).float() - 1.5
    return DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=False)


def _trainer(max_epochs: int, callbacks: list, **options) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **options,
    )


def _search(max_epochs: int = 20, **options) -> tuple[EarlyBirdCallback, L.Trainer, Classifier]:
    callback = EarlyBirdCallback(EXAMPLE, module="net", **{**SEARCH, **options})
    model = Classifier()
    trainer = _trainer(max_epochs, [callback])
    trainer.fit(model, _loader())
    return callback, trainer, model


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[EarlyBirdCallback, L.Trainer, Classifier]:
    return _search()


def test_one_mask_per_epoch_and_the_fit_stops_when_the_ticket_emerges(uninterrupted):
    callback, trainer, _ = uninterrupted
    epoch = callback.emerged_epoch
    assert epoch is not None and SEARCH["window"] <= epoch < 20  # stopped, not max_epochs
    assert trainer.current_epoch == epoch  # no epoch trained after the emergence
    assert callback.bird.history.epochs(0.25) == list(range(1, epoch + 1))
    assert callback.bird.learned  # the logged top-1 reached the learning guard
    ticket = callback.ticket
    assert ticket.epoch == epoch and ticket.pruned_fraction == 0.25
    assert ticket.extra["earlybird"]["window_max"] < 0.1


def test_the_slim_model_runs_with_fewer_macs(uninterrupted):
    callback, _, model = uninterrupted
    slim = callback.slim_model()
    assert slim(torch.randn(2, 3, 12, 12)).shape == (2, 4)
    assert slim[1].num_features < 8 or slim[4].num_features < 16
    assert count_flops(slim, (3, 12, 12)).macs < count_flops(model.net, (3, 12, 12)).macs


def test_a_fit_resumed_from_a_checkpoint_continues_the_fifo(uninterrupted, tmp_path: Path):
    reference, _, _ = uninterrupted
    stop = reference.emerged_epoch - 1  # the FIFO part full, the ticket not yet emerged
    first, trainer, _ = _search(max_epochs=stop)
    assert first.ticket is None and first.bird.history.epochs(0.25) == list(range(1, stop + 1))
    trainer.save_checkpoint(tmp_path / "stopped.ckpt")

    resumed = EarlyBirdCallback(EXAMPLE, module="net", **SEARCH)
    model = Classifier(seed=5)  # other initial weights: the checkpoint's must replace them
    trainer = _trainer(20, [resumed])
    trainer.fit(model, _loader(), ckpt_path=tmp_path / "stopped.ckpt", weights_only=True)
    assert resumed.emerged_epoch == reference.emerged_epoch
    assert resumed.ticket.to_dict() == reference.ticket.to_dict()
    # epochs 1..stop came from the checkpoint (a fresh FIFO would start at stop + 1)
    history, expected = resumed.bird.history, reference.bird.history
    assert (
        history.epochs(0.25) == expected.epochs(0.25) == list(range(1, reference.emerged_epoch + 1))
    )
    assert np.array_equal(history.packed(0.25), expected.packed(0.25))


def _first_step_bn_grad(sparsity: float, **trainer_options) -> tuple[torch.Tensor, torch.Tensor]:
    """The first step's BN-weight gradient as the optimizer sees it, and the initial gamma."""
    callback = EarlyBirdCallback(EXAMPLE, module="net", **{**SEARCH, "sparsity": sparsity})
    model = Classifier()
    gamma = model.net[1].weight.detach().clone()
    trainer = _trainer(1, [callback], limit_train_batches=1, **trainer_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch cannot emerge; nothing else to see
        trainer.fit(model, _loader())
    return model.bn_grads[0], gamma


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "16-mixed"])
def test_the_bn_l1_subgradient_reaches_the_optimizer_unscaled(amp: bool):
    options = {}
    if amp:  # Lightning's fp16 AMP plugin with a real GradScaler (CPU autocast runs fp16)
        options = {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}
    without, gamma = _first_step_bn_grad(0.0, **options)
    with_penalty, _ = _first_step_bn_grad(0.05, **options)
    # the full s * sign(gamma), not s / 65536 as a penalty on the scaled gradients would be
    assert torch.allclose(with_penalty - without, 0.05 * gamma.sign(), rtol=0, atol=1e-6)


def test_without_logged_metrics_it_warns_that_learning_is_unchecked():
    callback = EarlyBirdCallback(EXAMPLE, module="net", top1_key="acc", loss_key=None, **SEARCH)
    trainer = _trainer(1, [callback], limit_train_batches=1)
    with pytest.warns(UserWarning, match="no logged metric 'acc' or None"):
        trainer.fit(Classifier(), _loader())
    assert not callback.bird.learning.checked


def test_a_wrong_module_name_and_slimming_before_emergence_are_user_errors():
    callback = EarlyBirdCallback(EXAMPLE, module="backbone", **SEARCH)
    with pytest.raises(UserError, match="module='backbone'.*no such submodule"):
        _trainer(1, [callback]).fit(Classifier(), _loader())
    with pytest.raises(UserError, match="no ticket has emerged yet"):
        callback.slim_model()


class _ConvOnly(Classifier):
    """An optimizer that holds no BN weight, as under a sharded strategy's flat parameters."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net[0].parameters(), lr=0.05)


def test_an_optimizer_holding_no_bn_weight_is_a_user_error_not_a_lost_penalty():
    callback = EarlyBirdCallback(EXAMPLE, module="net", **SEARCH)
    with pytest.raises(UserError, match="no optimizer holds the network's BatchNorm weights"):
        _trainer(1, [callback], limit_train_batches=1).fit(_ConvOnly(), _loader())


class _RankZeroSays:
    """A data-parallel group seen from rank 1: the ranks' masks agree, and rank 0's emergence
    verdict is "not yet" until epoch ``at``, then "emerged" whatever this rank measured."""

    def __init__(self, at: int) -> None:
        self.at, self.epoch = at, 0

    def is_initialized(self) -> bool:
        return True

    def all_reduce_min(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor  # every rank drew the same masks

    def broadcast_object(self, obj: dict, src: int = 0) -> dict:
        self.epoch += 1
        return {0.25: 0.0} if self.epoch >= self.at else {}


def test_every_rank_stops_at_rank_zeros_epoch():
    for at in (2, 30):  # rank 0 decides before this rank could; rank 0 never decides
        callback, trainer, _ = _search(max_epochs=8, collectives=_RankZeroSays(at))
        assert callback.emerged_epoch == (2 if at == 2 else None)
        assert trainer.current_epoch == (2 if at == 2 else 8)


def test_the_lightning_module_itself_can_be_searched_and_slimmed():
    callback = EarlyBirdCallback(EXAMPLE, **SEARCH, collectives=_RankZeroSays(at=1))
    model = Classifier()
    trainer = _trainer(3, [callback], limit_train_batches=1)
    trainer.fit(model, _loader())
    assert callback.emerged_epoch == 1 and set(callback.ticket.kept) == {"net.0", "net.3"}
    slim = callback.slim_model()  # a copy of the module without the trainer it is attached to
    assert isinstance(slim, Classifier) and slim._trainer is None and model.trainer is trainer
    assert slim(torch.randn(2, 3, 12, 12)).shape == (2, 4)


class _RankRecorder(EarlyBirdCallback):
    """Writes what this rank ended with, for the launching process to compare."""

    def __init__(self, folder: str, **options) -> None:
        super().__init__(EXAMPLE, module="net", **options)
        self.folder = folder

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = {
            "epoch": trainer.current_epoch,
            "emerged": self.emerged_epoch,
            "ticket": self.ticket.to_dict() if self.ticket is not None else None,
        }
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow  # two spawned gloo processes import torch and Lightning (~15 s on 2 cores)
def test_under_ddp_spawn_both_ranks_stop_at_the_same_epoch_with_the_same_ticket(tmp_path):
    callback = _RankRecorder(str(tmp_path), **SEARCH)
    trainer = L.Trainer(
        max_epochs=20,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Classifier(), _loader())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["emerged"] is not None and ranks[0]["epoch"] == ranks[0]["emerged"]
    assert ranks[0] == ranks[1]

"""Early-Bird tickets in a Lightning fit: :class:`EarlyBirdCallback`.

Needs Lightning (``pip install "ebcompress[lightning]"``, which installs the ``lightning``
package; the callback is a ``lightning.pytorch`` Callback). The callback runs the same
:class:`~ebcompress.earlybird.EarlyBird` a hand-written loop uses:

- the BN-L1 subgradient in ``on_before_optimizer_step``, on unscaled gradients (below);
- one mask per epoch in ``on_train_epoch_end``, from the epoch's logged training metrics;
- ``trainer.should_stop`` once the ticket emerged, on every data-parallel rank alike;
- the detector's state in Lightning checkpoints, so a resumed fit continues the FIFO;
- :attr:`EarlyBirdCallback.ticket` and :meth:`EarlyBirdCallback.slim_model` afterwards.

Why ``on_before_optimizer_step`` and never ``on_after_backward``: under ``precision="16-mixed"``
Lightning's ``MixedPrecision.optimizer_step`` runs the closure (forward, ``scaler.scale(loss)``,
backward, ``on_after_backward``), then ``scaler.unscale_(optimizer)``, then this hook, then
gradient clipping and ``scaler.step`` (lightning/pytorch/plugins/precision/amp.py, 2.6). So
``on_after_backward`` sees gradients still multiplied by the loss scale, where a penalty added
would be divided by it (65,536 by default) and vanish; this hook sees true gradients, once per
optimizer step (after gradient accumulation), before clipping, as a plain loop's
``regularize()`` between ``backward()`` and ``step()``. The penalty is still added through the
precision plugin's scaler (:func:`~ebcompress.earlybird.sparsity.gradient_scale`), which leaves
it as is here and scales it where Lightning does not unscale first (fused optimizers that
unscale in their own step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(
        "ebcompress.integrations.lightning needs Lightning: pip install 'ebcompress[lightning]'"
    ) from exc

from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.checks import check_batch
from ebcompress.earlybird.detector import EarlyBird
from ebcompress.earlybird.sparsity import BNL1Regularizer
from ebcompress.errors import UserError

STATE_FORMAT = 1


class EarlyBirdCallback(pl.Callback):
    """Early-Bird ticket search (You et al., ICLR 2020) as a Lightning callback.

    ``example_inputs`` is one batch the network runs (any batch size); ``ratio`` and the
    keywords (``epsilon``, ``window``, ``sparsity``, ``num_classes``, ``min_search_epochs``,
    ``draw_options`` fields, ``collectives``, ...) are :class:`~ebcompress.earlybird.EarlyBird`'s.
    ``module`` names the network inside the LightningModule (``"net"`` for ``self.net``, dotted
    for deeper ones); None searches the LightningModule itself, whose ``forward`` must then run
    ``example_inputs``. The detector is built at ``on_fit_start``, on the network's device (where
    the data-parallel collectives run) and after the checkpoint's weights are loaded; before
    that :attr:`bird` is None.

    Epoch end reads ``trainer.callback_metrics``: ``f"{top1_key}_epoch"`` or ``top1_key`` (the
    training top-1 as a fraction) and the same for ``loss_key``. Log them from
    ``training_step`` with ``self.log("train_top1", acc, on_epoch=True)``, and under data
    parallelism with ``sync_dist=True`` for the whole data's value (rank 0's decides). With
    neither metric the learning guard is off and a warning says so. Set a key to None to ignore
    that metric. ``stop_on_emergence=False`` keeps training (and recording masks) after the
    ticket emerged.

    Data parallelism: every rank calls :meth:`EarlyBird.step`, which checks that the ranks drew
    the same masks and broadcasts rank 0's emergence verdict, so every rank sets
    ``should_stop`` at the same epoch. Under ``ddp_spawn`` the fit runs in worker processes and
    only the weights return to the launching one: read :attr:`ticket` there (e.g. in the
    LightningModule's ``on_fit_end``) or use ``strategy="ddp"``.
    """

    def __init__(
        self,
        example_inputs: Tensor,
        ratio: float | Sequence[float] = 0.3,
        *,
        module: str | None = None,
        top1_key: str | None = "train_top1",
        loss_key: str | None = "train_loss",
        stop_on_emergence: bool = True,
        **earlybird: Any,
    ) -> None:
        super().__init__()
        self.example_inputs = check_batch(example_inputs, "example_inputs")
        self.ratio = ratio
        self.module = module
        self.top1_key, self.loss_key = top1_key, loss_key
        self.stop_on_emergence = bool(stop_on_emergence)
        self.earlybird_options = dict(earlybird)
        self.bird: EarlyBird | None = None
        self._network: nn.Module | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state loaded before the build
        self._regularizers: dict[int, BNL1Regularizer] = {}  # by optimizer, this fit's
        self._warned_metrics = False

    @property
    def state_key(self) -> str:
        # two callbacks watching different ratios or networks keep separate checkpoint entries
        return self._generate_state_key(ratio=self.ratio, module=self.module)

    # ------------------------------------------------------------------ the result
    @property
    def ticket(self) -> Ticket | None:
        """The primary ratio's emerged ticket, or None (not emerged, or no fit yet)."""
        return None if self.bird is None else self.bird.ticket

    @property
    def emerged_epoch(self) -> int | None:
        """The (1-based) epoch the primary ratio's ticket emerged, or None."""
        return None if self.bird is None else self.bird.emerged_epoch[self.bird.ratios[0]]

    def slim_model(
        self, model: nn.Module | None = None, example_inputs: Tensor | None = None
    ) -> nn.Module:
        """The physically slimmed copy (:func:`~ebcompress.channels.slim`) of ``model``
        (default: the searched network, with its current weights) keeping the ticket's
        channels; ``example_inputs`` default to the callback's. The model is untouched.
        A UserError before the ticket emerged."""
        if self.ticket is None:
            raise UserError(
                "EarlyBirdCallback.slim_model(): no ticket has emerged yet; train longer "
                "(max_epochs) or slim bird.latest_ticket() by hand with ebcompress.slim"
            )
        model = self._network if model is None else model
        inputs = self.example_inputs if example_inputs is None else example_inputs
        with _without_trainer(model):
            return slim(model, self.ticket, inputs.to(_device(model, inputs)))

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = self._find_network(pl_module)
        self._regularizers = {}  # per optimizer: this fit's optimizers are new ones
        if self.bird is None or network is not self._network:  # a new fit of another network
            inputs = self.example_inputs.to(_device(network, self.example_inputs))
            with _without_trainer(network):
                self.bird = EarlyBird(network, inputs, self.ratio, **self.earlybird_options)
            self._network = network
        if self._pending is not None:
            self.bird.load_state_dict(self._pending)
            self._pending = None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.bird is None:
            return
        regularize = self._regularizers.get(id(optimizer))
        if regularize is None:  # only the BNs this optimizer steps: once per step with several
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            bns = [bn for bn in self.bird.regularizer.bns if id(bn.weight) in held]
            regularize = BNL1Regularizer(bns, self.bird.regularizer.strength)
            self._regularizers[id(optimizer)] = regularize
        # Lightning unscaled already (module docstring); the scaler says so, or scales the term
        regularize(getattr(trainer.precision_plugin, "scaler", None))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.bird is None:
            return
        self._check_penalty_reached_the_bns()
        epoch = trainer.current_epoch + 1
        recorded = self.bird.history.epochs(self.bird.ratios[0])
        if not recorded or epoch > recorded[-1]:  # an epoch a checkpoint recorded is not redrawn
            metrics = trainer.callback_metrics
            top1, loss = _metric(metrics, self.top1_key), _metric(metrics, self.loss_key)
            if top1 is None and loss is None and not self._warned_metrics:
                self._warned_metrics = True
                rank_zero_warn(
                    f"EarlyBirdCallback: no logged metric {self.top1_key!r} or {self.loss_key!r} "
                    "at epoch end, so the ticket cannot wait for the network to learn; log them "
                    "with self.log(..., on_epoch=True) or set top1_key=/loss_key="
                )
            self.bird.step(epoch, train_top1=top1, train_loss=loss)
        # the same on every rank: step() broadcast rank 0's verdict
        if self.stop_on_emergence and self.bird.ticket is not None:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        """The detector's state (survives ``torch.load(weights_only=True)``); empty before
        the first fit built it."""
        state = self.bird.state_dict() if self.bird is not None else self._pending
        return {} if state is None else {"format": STATE_FORMAT, "earlybird": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; before ``on_fit_start`` (Lightning's usual order) it is
        kept and loaded into the detector once that is built."""
        if not state_dict:
            return
        if state_dict.get("format") != STATE_FORMAT or "earlybird" not in state_dict:
            raise UserError(
                f"EarlyBirdCallback checkpoint state: unsupported format "
                f"{state_dict.get('format')!r} (expected {STATE_FORMAT})"
            )
        if self.bird is None:
            self._pending = state_dict["earlybird"]
        else:
            self.bird.load_state_dict(state_dict["earlybird"])

    # ------------------------------------------------------------------ helpers
    def _check_penalty_reached_the_bns(self) -> None:
        """UserError when optimizers stepped but none holds a BN weight of the network:
        a sharded strategy (FSDP, DeepSpeed) flattens them, and the penalty would silently
        be lost (the failure this callback exists to prevent)."""
        stepped = list(self._regularizers.values())
        wanted = self.bird is not None and self.bird.regularizer.strength > 0
        if wanted and self.bird.regularizer.bns and stepped and not any(r.bns for r in stepped):
            raise UserError(
                "EarlyBirdCallback: no optimizer holds the network's BatchNorm weights "
                "(sharded strategies such as FSDP or DeepSpeed flatten them), so the BN-L1 "
                "penalty cannot be applied; use strategy='ddp', or sparsity=0 to search "
                "without it"
            )

    def _find_network(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError:
            raise UserError(
                f"EarlyBirdCallback(module={self.module!r}): {type(pl_module).__name__} has no "
                "such submodule; name the network's attribute, e.g. module='net' for self.net"
            ) from None


def _metric(metrics: dict[str, Any], key: str | None) -> Any:
    """The epoch value logged under ``key`` (Lightning adds ``_epoch`` when a metric is logged
    both per step and per epoch), or None."""
    if key is None:
        return None
    for name in (f"{key}_epoch", key):
        if metrics.get(name) is not None:
            return metrics[name]
    return None


def _device(model: nn.Module, fallback: Tensor) -> Any:
    return next(model.parameters(), fallback).device


@contextlib.contextmanager
def _without_trainer(model: nn.Module) -> Iterator[None]:
    """A LightningModule detached from its trainer for the duration: slimming deep-copies
    the module, and a copy must not drag the trainer (data loaders, optimizers) along."""
    trainer = getattr(model, "_trainer", None) if isinstance(model, pl.LightningModule) else None
    if trainer is not None:
        model._trainer = None
    try:
        yield
    finally:
        if trainer is not None:
            model._trainer = trainer

"""The Early-Bird ticket detector (You et al., ICLR 2020, Sec. 3.3 and Algorithm 1).

While the dense network trains with BN-L1 sparsity, :class:`EarlyBird` draws one channel mask
per epoch from the BN scales at each watched pruning ratio, keeps every mask in a bit-packed
:class:`MaskHistory` (the paper's Figure 3 distance matrix comes from it) and declares the
ticket emerged once the masks stop moving. It fits a hand-written loop (``regularize()``
after ``backward()``, ``step()`` once per epoch) and the engine's callback protocol alike.

Under data parallelism every rank runs the detector on its replica: each step checks that all
ranks drew the same masks (a hash all-reduce; a difference is an error), and rank 0 alone
decides emergence and broadcasts it, so every rank stops at the same epoch with the same ticket
(through :class:`~ebcompress.earlybird.collectives.Collectives`: torch.distributed's default
group unless another is given).

Two guards a user's own model needs and the paper's calibrated setups did not: BatchNorms
whose scales were zero-initialised do not count in the ranking
(:mod:`~ebcompress.channels.zero_init`), and no ticket emerges before the network has
measurably learned (:mod:`~ebcompress.earlybird.learning`)
— a network stuck at chance has stable masks too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ebcompress.channels.capped import warn_capped
from ebcompress.channels.draw_options import DrawOptions, resolve_draw_options
from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.groups import modes_preserved
from ebcompress.channels.ticket import Ticket
from ebcompress.checks import check_batch, check_int, check_module, check_number, check_runs
from ebcompress.earlybird.collectives import Collectives, TorchCollectives, check_ranks_agree
from ebcompress.earlybird.learning import DEFAULT_MARGIN, LearningCheck
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.earlybird.sparsity import BNL1Regularizer
from ebcompress.errors import UserError

if TYPE_CHECKING:
    from torch.amp import GradScaler

STATE_FORMAT = 1


class EarlyBird:
    """Early-Bird ticket detector (You et al., ICLR 2020, Algorithm 1) for the user's own loop.

    Each :meth:`step` (once per epoch) ranks the BN scales of the prunable channel groups and
    draws a ticket at every watched ratio (the first is the primary one; the paper watches
    0.3/0.5/0.7 at once). The newest ``window`` masks of a ratio form its FIFO; the ticket has
    emerged once the FIFO is full and the newest mask's distance to each of the
    ``window - 1`` older ones is below ``epsilon`` (max < epsilon). The mask drawn at that
    epoch is the ticket; emergence is final, later masks are still recorded.

    The paper's Algorithm 1 stores the ``window`` *consecutive* distances in the FIFO instead
    (needing ``window + 1`` masks); comparing the newest mask with every older one bounds
    drift across the whole window, not just between neighbours.

    :meth:`regularize` applies the BN-L1 subgradient (``sparsity``, Sec. 4) to the BNs of the
    prunable groups: call it after ``loss.backward()`` and before ``optimizer.step()``
    (under a ``torch.amp.GradScaler``: ``regularize(scaler)``).

    Guards for a model and data the paper did not calibrate:

    - BatchNorms whose scales are all zero at construction (timm's default
      ``zero_init_last``) are left out of their group's importance and named in every
      ticket's ``zero_init_bns`` (:mod:`ebcompress.channels.zero_init` says why); the model is
      untouched.
    - Learning: pass the epoch's training metrics to :meth:`step` (``train_top1`` and/or
      ``train_loss``). No ticket emerges until they show the network has learned
      (:class:`~ebcompress.earlybird.learning.LearningCheck`: top-1 at least
      ``chance + learning_margin * (1 - chance)``, or the loss ``(1 - learning_margin)``
      below ``ln(num_classes)``), and only masks drawn from that epoch on fill the window.
      ``chance`` defaults to
      ``1 / num_classes``, else one over the width of the model's output on
      ``example_inputs``; the loss criterion uses ``ln(num_classes)`` only when
      ``num_classes`` is given (it assumes cross-entropy), else the first epoch's loss.
      Without metrics the check is skipped, and the emerged ticket warns that it was.
    - ``min_search_epochs``: no emergence before this epoch.
    ``ignored_layers`` (modules or names; a container means all its submodules) stay dense,
    as in torch-pruning; the tickets record them so :func:`~ebcompress.channels.slim` replays them.

    Masks are drawn by ``draw_options`` (:class:`~ebcompress.channels.DrawOptions`) with its
    fields given as keywords applied on top: ``max_group_ratio=1.0`` is the paper's uncapped
    rule (default 0.9); groups at the limit are named in ``capped`` and, at emergence, warned of.
    With a ``budget`` among them (:class:`~ebcompress.channels.draw_options.Budget`) each
    epoch's mask is the one that meets the budget under that epoch's BN scales (its ratio
    searched), so the mask distance compares budget-constrained tickets; the detector then
    watches one ratio, the key its tickets are filed under, which the draw does not use.

    ``collectives`` is how the data-parallel ranks agree on the masks and on emergence
    (:class:`~ebcompress.earlybird.collectives.Collectives`; default: torch.distributed's
    default group, or a world of one without one).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor,
        ratio: float | Sequence[float] = 0.3,
        *,
        epsilon: float = 0.1,
        window: int = 5,
        sparsity: float = 1e-4,
        draw_options: DrawOptions | None = None,
        graph: ChannelGraph | None = None,
        ignored_layers: Sequence[nn.Module | str] = (),
        model_name: str | None = None,
        min_search_epochs: int = 0,
        num_classes: int | None = None,
        chance: float | None = None,
        learning_margin: float = DEFAULT_MARGIN,
        collectives: Collectives | None = None,
        **changes: Any,
    ) -> None:
        check_module(model, "model")
        check_batch(example_inputs, "example_inputs")
        self.ratios = _check_ratios(ratio)
        if not 0 < check_number(epsilon, "Early-Bird epsilon") <= 1:
            raise UserError(
                f"Early-Bird epsilon {epsilon!r} must lie in (0, 1] (the paper uses 0.1)"
            )
        # Built (and checked) now, not at the first draw: a mistake should not cost an epoch.
        self.draw_options = resolve_draw_options(draw_options, "draw_options").updated(**changes)
        if self.draw_options.budget is not None and len(self.ratios) > 1:
            raise UserError(
                f"EarlyBird: with a budget ({self.draw_options.budget.describe()}) every "
                f"epoch's mask is the one that meets it, whatever the ratio; watch one "
                f"ratio, not {list(self.ratios)} (the recipe: leave prune.watch_ratios empty)"
            )
        self.model_name = model_name
        if check_int(min_search_epochs, "min_search_epochs") < 0:
            raise UserError(f"min_search_epochs={min_search_epochs} must be >= 0")
        self.min_search_epochs = int(min_search_epochs)
        self._unguarded = False  # True only for a search resumed from a pre-guard state
        self.epsilon = float(epsilon)
        self.history = MaskHistory(window)
        # Where the rank-agreement collectives run (NCCL needs the model's CUDA device).
        self._device = next(model.parameters(), example_inputs).device
        self.collectives = collectives if collectives is not None else TorchCollectives()
        if graph is None:
            graph = ChannelGraph(model, example_inputs, ignored_layers=ignored_layers)
        else:  # traced already; the chance level below still runs example_inputs
            check_runs(model, example_inputs, "example_inputs")
        self.graph = graph
        self.regularizer = BNL1Regularizer(self.graph.bn_modules(), sparsity)
        if chance is None and num_classes is None:
            # Only the chance level is taken from the output's width: the loss criterion's
            # ln(C) reference assumes cross-entropy, which a given num_classes vouches for.
            width = _output_width(model, example_inputs)
            chance = None if width is None else 1.0 / width
        self.learning = LearningCheck(
            chance=chance, num_classes=num_classes, margin=learning_margin
        )
        self.tickets: dict[float, Ticket] = {}
        self.emerged_epoch: dict[float, int | None] = dict.fromkeys(self.ratios)
        self._latest: dict[float, Ticket] = {}

    @property
    def window(self) -> int:
        return self.history.window

    @property
    def ticket(self) -> Ticket | None:
        """The primary ratio's emerged ticket, or None while it has not emerged."""
        return self.tickets.get(self.ratios[0])

    # ------------------------------------------------------------------ the loop
    def regularize(self, scaler: GradScaler | None = None) -> None:
        """BN-L1 subgradient: call after ``loss.backward()``, before ``optimizer.step()``.

        Under mixed precision pass the ``torch.amp.GradScaler``: its gradients are scaled
        until ``scaler.step`` unscales them, and the term is added at that scale, so the
        penalty stays ``s * sign(gamma)`` (without the scaler it would shrink by the scale
        factor). Before or after ``scaler.unscale_(optimizer)`` are both right; after
        ``scaler.step`` is a UserError.
        """
        self.regularizer(scaler)

    @property
    def learned(self) -> bool:
        """Whether the training metrics given to :meth:`step` show the network has learned."""
        return self.learning.learned

    def step(
        self,
        epoch: int | None = None,
        *,
        train_top1: float | None = None,
        train_loss: float | None = None,
    ) -> bool:
        """Draw and record this epoch's mask at every watched ratio; True once the primary
        ratio's ticket has emerged (and on every later call). Epochs must increase; ``epoch``
        defaults to the last recorded one plus 1, so calls alone count 1, 2, 3, ...

        ``train_top1`` (a fraction) and ``train_loss`` are this epoch's training metrics: with
        either, no ticket emerges before they show that the network learned (class docstring).
        """
        last = self.history.epochs(self.ratios[0])
        epoch = (last[-1] + 1 if last else 1) if epoch is None else check_int(epoch, "epoch")
        if last and epoch <= last[-1]:
            raise UserError(
                f"EarlyBird.step(epoch={epoch}) after epoch {last[-1]}; pass increasing epochs "
                "or none (to count calls), and load_state_dict() before resuming"
            )
        self.learning.update(epoch, train_top1=train_top1, train_loss=train_loss)
        drawn = {  # every epoch draws; only the emerged ticket warns
            r: self.graph.draw(
                r, self.draw_options, epoch=epoch, model_name=self.model_name, warn=False
            )
            for r in self.ratios
        }
        masks = {ratio: ticket.mask() for ratio, ticket in drawn.items()}
        check_ranks_agree(masks, epoch, self._device, self.collectives)
        for ratio, ticket in drawn.items():
            self.history.append(ratio, epoch, masks[ratio])
            self._latest[ratio] = ticket
        self._decide_emergence(epoch)
        return self.ticket is not None

    def _decide_emergence(self, epoch: int) -> None:
        """The emergence test for every ratio still waiting; rank 0's verdict holds on all ranks."""
        emerging = {}
        for ratio in self.ratios:
            distance = self.history.latest_window_max(ratio)
            waiting = self.emerged_epoch[ratio] is None
            allowed = epoch >= self.min_search_epochs and self._window_after_learning(ratio)
            if waiting and allowed and distance is not None and distance < self.epsilon:
                emerging[ratio] = distance
        for ratio, distance in self.collectives.broadcast_object(emerging).items():
            ticket = self._latest[ratio]
            provenance = {
                "epsilon": self.epsilon,
                "window": self.window,
                "window_max": distance,
                "learning_checked": self.learning.checked,
                "learned_epoch": self.learning.learned_epoch,
            }
            self.tickets[ratio] = replace(ticket, extra={**ticket.extra, "earlybird": provenance})
            self.emerged_epoch[ratio] = epoch
            if ratio == self.ratios[0]:
                self._warn_on_emergence(self.tickets[ratio])

    def _window_after_learning(self, ratio: float) -> bool:
        """Whether every mask in the ratio's window was drawn once the network had learned
        (always, when no training metrics were given: then nothing can be checked)."""
        if self._unguarded or not self.learning.checked:
            return True
        if not self.learning.learned:
            return False
        epochs = self.history.epochs(ratio)
        return len(epochs) >= self.window and epochs[-self.window] >= self.learning.learned_epoch

    def _warn_on_emergence(self, ticket: Ticket) -> None:
        warn_capped(ticket)
        if not self.learning.checked:
            warnings.warn(
                f"EarlyBird: the ticket emerged at epoch {ticket.epoch} without a check that "
                "the network learned; pass step(train_top1=..., train_loss=...) so a network "
                "stuck at chance cannot produce a ticket",
                stacklevel=4,
            )

    def window_distance(self, ratio: float | None = None) -> float | None:
        """The newest mask's largest distance to the older masks in the FIFO (None until
        the FIFO is full): the number compared with ``epsilon``, for logging."""
        return self.history.latest_window_max(self._watched(ratio))

    def latest_ticket(self, ratio: float | None = None) -> Ticket:
        """The newest drawn mask as a Ticket: the fallback when no ticket emerged."""
        ratio = self._watched(ratio)
        if ratio not in self._latest:
            raise UserError(
                "EarlyBird.latest_ticket(): no mask drawn yet; call step() after an epoch"
            )
        return self._latest[ratio]

    def _watched(self, ratio: float | None) -> float:
        if ratio is None:
            return self.ratios[0]
        for watched in self.ratios:
            if math.isclose(watched, ratio, abs_tol=1e-9):
                return watched
        raise UserError(f"ratio {ratio!r} is not watched; EarlyBird watches {list(self.ratios)}")

    # ------------------------------------------------------------------ engine callback protocol
    def after_backward(self, model: nn.Module) -> None:
        self.regularize()

    def end_of_epoch(self, epoch: int, stats: Any) -> bool:
        # the engine's EpochStats; anything without the fields skips the learning check
        return self.step(
            epoch,
            train_top1=getattr(stats, "train_top1", None),
            train_loss=getattr(stats, "train_loss", None),
        )

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`step` depends on; survives ``torch.load(weights_only=True)``."""
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.graph.fingerprint,
            "ratios": list(self.ratios),
            "history": self.history.state_dict(),
            "latest": [{"ratio": r, "ticket": t.to_dict()} for r, t in self._latest.items()],
            "emerged": [
                {"ratio": r, "epoch": self.emerged_epoch[r], "ticket": t.to_dict()}
                for r, t in self.tickets.items()
            ],
            "learning": self.learning.state_dict(),
            "zero_init_bns": list(self.graph.zero_init_bns),
            "unguarded": self._unguarded,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output for the same network, ratios and window.

        ``epsilon`` stays the constructor's, so a resumed search may loosen or tighten it.
        """
        where = "Early-Bird state"
        try:
            if state["format"] != STATE_FORMAT:
                raise UserError(f"{where}: unsupported format {state['format']!r}")
            if state["fingerprint"] != self.graph.fingerprint:
                raise UserError(
                    f"{where} was recorded on a different network (structure "
                    f"{state['fingerprint']}, this model {self.graph.fingerprint})"
                )
            ratios = tuple(float(r) for r in state["ratios"])
            if ratios != self.ratios:
                raise UserError(f"{where} watches ratios {list(ratios)}, not {list(self.ratios)}")
            history = MaskHistory.from_state_dict(state["history"], where)
            if history.window != self.window:
                raise UserError(f"{where} uses window {history.window}, not {self.window}")
            channels = sum(self.graph.widths.values())
            if history.ratios and (
                sorted(history.ratios) != sorted(self.ratios) or history.num_channels != channels
            ):
                raise UserError(
                    f"{where} holds masks of {history.num_channels} channels at ratios "
                    f"{history.ratios}, not of {channels} at {list(self.ratios)}"
                )
            latest = {
                float(e["ratio"]): Ticket.from_dict(e["ticket"], where) for e in state["latest"]
            }
            tickets = {
                float(e["ratio"]): Ticket.from_dict(e["ticket"], where) for e in state["emerged"]
            }
            emerged = {float(e["ratio"]): int(e["epoch"]) for e in state["emerged"]}
            learning = replace(self.learning)  # loaded into a copy: a bad state changes nothing
            learning.load_state_dict(state.get("learning", {}))
            # The BNs left out of the ranking are those of the search's start, even when the
            # model was loaded with trained weights before this detector was built.
            saved_zero = tuple(state.get("zero_init_bns", ()))
            if not all(isinstance(name, str) for name in saved_zero):
                raise TypeError("zero_init_bns must list BatchNorm names")
            # a state saved before the check existed: that search ran unguarded, and stays so
            unguarded = bool(state.get("unguarded", "learning" not in state))
        # IndexError, RuntimeError: a tensor where the state holds a list or a number
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise UserError(f"{where}: not a valid Early-Bird state ({exc})") from None
        self.history, self._latest, self.tickets = history, latest, tickets
        self.emerged_epoch = {r: emerged.get(r) for r in self.ratios}
        self._unguarded, self.learning = unguarded, learning
        if saved_zero != self.graph.zero_init_bns:
            self.graph.exclude_from_importance(saved_zero)


def _check_ratios(ratio: float | Sequence[float]) -> tuple[float, ...]:
    several = isinstance(ratio, Sequence) and not isinstance(ratio, str)
    several = several or (isinstance(ratio, np.ndarray) and ratio.ndim > 0)
    ratios = tuple(check_number(r, "EarlyBird ratio") for r in (ratio if several else (ratio,)))
    if not ratios:
        raise UserError("EarlyBird ratio: give at least one pruning ratio, e.g. 0.3")
    bad = [r for r in ratios if not 0 < r < 1]
    if bad:
        raise UserError(f"EarlyBird ratio {bad} must each lie in the open interval (0, 1)")
    if len(set(ratios)) != len(ratios):
        raise UserError(f"EarlyBird ratio {list(ratios)} lists a ratio twice")
    return ratios


def _output_width(model: nn.Module, example_inputs: Tensor) -> int | None:
    """The class count a classifier's output shows on ``example_inputs`` (eval mode, no
    grad, every module's mode restored), or None when the output is not ``(batch, classes)``."""
    with modes_preserved(model), torch.no_grad():
        model.eval()
        param = next(model.parameters(), None)
        inputs = example_inputs[:1] if param is None else example_inputs[:1].to(param.device)
        output = model(inputs)
    if isinstance(output, Tensor) and output.ndim == 2 and output.shape[1] > 1:
        return int(output.shape[1])
    return None

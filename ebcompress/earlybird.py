"""The Early-Bird ticket detector (You et al., ICLR 2020, Sec. 3.3 and Algorithm 1).

While the dense network trains with BN-L1 sparsity, :class:`EarlyBird` draws one channel mask
per epoch from the BN scales at each watched pruning ratio, keeps every mask in a bit-packed
:class:`MaskHistory` (the paper's Figure 3 distance matrix comes from it) and declares the
ticket emerged once the masks stop moving. It fits a hand-written loop (``regularize()``
after ``backward()``, ``step()`` once per epoch) and the engine's callback protocol alike.

Under data parallelism every rank runs the detector on its replica: each step checks that all
ranks drew the same masks (a hash all-reduce; a difference is an error), and rank 0 alone
decides emergence and broadcasts it, so every rank stops at the same epoch with the same ticket.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ebcompress import distributed
from ebcompress.channels import ChannelGraph
from ebcompress.errors import UserError
from ebcompress.sparsity import BNL1Regularizer
from ebcompress.ticket import Ticket

HISTORY_FORMAT = 1
STATE_FORMAT = 1


class MaskHistory:
    """One keep-mask per recorded epoch per pruning ratio, stored bit-packed.

    ``np.packbits`` stores a mask in one bit per channel, so ResNet-50's ~26k prunable channels
    cost ~3.3 kB per epoch and ratio. ``window`` is the length of the Early-Bird FIFO; all
    masks (across ratios) must have the same number of channels. Distances are normalised
    Hamming distances (:func:`ebcompress.ticket.mask_distance`), computed exactly.
    """

    def __init__(self, window: int = 5) -> None:
        if window < 2:
            raise UserError(f"Early-Bird window {window!r} must be >= 2 (the paper uses 5)")
        self.window = int(window)
        self.num_channels: int | None = None
        self._epochs: dict[float, list[int]] = {}
        self._packed: dict[float, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ recording
    def append(self, ratio: float, epoch: int, mask: np.ndarray) -> None:
        """Record ``mask`` (True = kept) as ratio ``ratio``'s mask at ``epoch``."""
        mask = np.asarray(mask, dtype=bool).ravel()
        if self.num_channels is None:
            self.num_channels = mask.size
        elif mask.size != self.num_channels:
            raise ValueError(f"mask has {mask.size} channels, the history {self.num_channels}")
        epochs = self._epochs.setdefault(float(ratio), [])
        if epochs and epoch <= epochs[-1]:
            raise UserError(
                f"epoch {epoch} for ratio {ratio} is not after the last recorded epoch "
                f"{epochs[-1]}; record one mask per epoch with increasing epochs"
            )
        epochs.append(int(epoch))
        self._packed.setdefault(float(ratio), []).append(np.packbits(mask))

    # ------------------------------------------------------------------ views
    @property
    def ratios(self) -> list[float]:
        return list(self._epochs)

    def epochs(self, ratio: float) -> list[int]:
        return list(self._epochs.get(float(ratio), []))

    def mask(self, ratio: float, epoch: int) -> np.ndarray:
        """The boolean keep-mask recorded for ``ratio`` at ``epoch``."""
        epochs = self._epochs.get(float(ratio), [])
        if epoch not in epochs:
            raise KeyError(f"no mask recorded for ratio {ratio} at epoch {epoch}")
        packed = self._packed[float(ratio)][epochs.index(epoch)]
        return np.unpackbits(packed, count=self.num_channels).astype(bool)

    def packed(self, ratio: float) -> np.ndarray:
        """All masks of ``ratio`` as one ``(epochs, ceil(channels / 8))`` uint8 array."""
        rows = self._packed.get(float(ratio), [])
        if not rows:
            return np.zeros((0, 0), dtype=np.uint8)
        return np.stack(rows)

    def distance_matrix(self, ratio: float) -> np.ndarray:
        """Pairwise normalised Hamming distances between all recorded masks of ``ratio``.

        XOR and popcount on the packed masks, 64 channels per machine word: exact integer
        counts (so exactly symmetric with a zero diagonal), ~10 ms for 90 epochs of ResNet-50.
        """
        words = _as_words(self.packed(ratio))
        if words.shape[0] == 0:
            return np.zeros((0, 0))
        counts = np.stack(
            [np.bitwise_count(words ^ row).sum(axis=1, dtype=np.int64) for row in words]
        )
        return counts / self.num_channels

    def window_max_distances(self, ratio: float) -> list[float | None]:
        """Per recorded epoch, the Early-Bird statistic: the largest distance between that
        epoch's mask and each of the ``window - 1`` masks before it; ``None`` until the FIFO
        holds ``window`` masks."""
        distances = self.distance_matrix(ratio)
        span = self.window - 1
        return [
            None if t < span else float(distances[t, t - span : t].max())
            for t in range(distances.shape[0])
        ]

    def latest_window_max(self, ratio: float) -> float | None:
        """:meth:`window_max_distances` for the newest mask only: ``window - 1`` XORs of
        packed words, cheap enough to run every epoch."""
        rows = self._packed.get(float(ratio), [])
        if len(rows) < self.window:
            return None
        words = _as_words(np.stack(rows[-self.window :]))
        differing = np.bitwise_count(words[:-1] ^ words[-1]).sum(axis=1, dtype=np.int64)
        return float(differing.max()) / self.num_channels

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors, lists, numbers and None only: survives ``torch.load(weights_only=True)``."""
        return {
            "format": HISTORY_FORMAT,
            "window": self.window,
            "num_channels": self.num_channels,
            "ratios": [
                {
                    "ratio": ratio,
                    "epochs": torch.tensor(self._epochs[ratio], dtype=torch.int64),
                    "packed": torch.from_numpy(self.packed(ratio)),
                }
                for ratio in self.ratios
            ],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], where: str = "Early-Bird state") -> MaskHistory:
        try:
            if state["format"] != HISTORY_FORMAT:
                raise UserError(f"{where}: unsupported mask history format {state['format']!r}")
            history = cls(int(state["window"]))
            num_channels = state["num_channels"]
            for entry in state["ratios"]:
                packed = _tensor_to_numpy(entry["packed"])
                epochs = [int(e) for e in _tensor_to_numpy(entry["epochs"])]
                history._restore(float(entry["ratio"]), epochs, packed, num_channels, where)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}: not a valid mask history ({exc})") from None
        return history

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``masks_p<ratio>.npy`` (bit-packed, one row per epoch) and
        ``distances_p<ratio>.npy`` (the distance matrix) per ratio, plus ``history.json``
        (epochs, channel count, window) last, each atomically, into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index = []
        for ratio in self.ratios:
            masks, distances = f"masks_p{ratio!r}.npy", f"distances_p{ratio!r}.npy"
            _save_npy_atomic(folder / masks, self.packed(ratio))
            _save_npy_atomic(folder / distances, self.distance_matrix(ratio).astype(np.float32))
            index.append(
                {
                    "ratio": ratio,
                    "epochs": self._epochs[ratio],
                    "masks": masks,
                    "distances": distances,
                }
            )
        meta = {
            "format": HISTORY_FORMAT,
            "window": self.window,
            "num_channels": self.num_channels,
            "ratios": index,
        }
        tmp = folder / "history.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, folder / "history.json")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> MaskHistory:
        """Read a folder written by :meth:`save` (no pickle: ``allow_pickle=False``)."""
        folder = Path(folder)
        index_path = folder / "history.json"
        where = f"mask history {str(folder)!r}"
        if not index_path.is_file():
            raise UserError(f"{where}: no history.json; point at the run's masks/ folder")
        try:
            meta = json.loads(index_path.read_text(encoding="utf-8"))
            if meta.get("format") != HISTORY_FORMAT:
                raise UserError(f"{where}: unsupported format {meta.get('format')!r}")
            history = cls(int(meta["window"]))
            for entry in meta["ratios"]:
                packed = np.load(folder / Path(entry["masks"]).name, allow_pickle=False)
                epochs = [int(e) for e in entry["epochs"]]
                history._restore(float(entry["ratio"]), epochs, packed, meta["num_channels"], where)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: unreadable ({exc}); re-run the search") from None
        return history

    def _restore(
        self, ratio: float, epochs: list[int], packed: np.ndarray, num_channels: int, where: str
    ) -> None:
        num_channels = int(num_channels)
        expected = (len(epochs), (num_channels + 7) // 8)
        if packed.dtype != np.uint8 or packed.shape != expected:
            raise UserError(
                f"{where}: ratio {ratio} masks are {packed.dtype} {packed.shape}, expected "
                f"uint8 {expected}"
            )
        if epochs != sorted(set(epochs)):
            raise UserError(f"{where}: ratio {ratio} epochs are not strictly increasing")
        self.num_channels = num_channels
        self._epochs[ratio] = epochs
        self._packed[ratio] = list(packed.copy())


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
    prunable groups: call it after ``loss.backward()`` and before ``optimizer.step()``.
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
        scope: str = "global",
        min_keep: int = 1,
        round_to: int | None = None,
        graph: ChannelGraph | None = None,
        model_name: str | None = None,
    ) -> None:
        self.ratios = _check_ratios(ratio)
        if not 0 < epsilon <= 1:
            raise UserError(
                f"Early-Bird epsilon {epsilon!r} must lie in (0, 1] (the paper uses 0.1)"
            )
        # Checked here as well as in draw(): a mistake should not cost a first epoch of training.
        if scope not in ("global", "uniform"):
            raise UserError(f"pruning scope {scope!r} must be 'global' or 'uniform'")
        if min_keep < 1 or (round_to is not None and round_to < 1):
            raise UserError(f"min_keep={min_keep} and round_to={round_to} must be >= 1 (or null)")
        self.epsilon = float(epsilon)
        self.history = MaskHistory(window)
        # Where the rank-agreement collectives run (NCCL needs the model's CUDA device).
        self._device = next(model.parameters(), example_inputs).device
        self.graph = ChannelGraph(model, example_inputs) if graph is None else graph
        self.regularizer = BNL1Regularizer(self.graph.bn_modules(), sparsity)
        self._draw_options: dict[str, Any] = {
            "scope": scope,
            "min_keep": min_keep,
            "round_to": round_to,
            "model_name": model_name,
        }
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
    def regularize(self) -> None:
        """BN-L1 subgradient: call after ``loss.backward()``, before ``optimizer.step()``."""
        self.regularizer()

    def step(self, epoch: int | None = None) -> bool:
        """Draw and record this epoch's mask at every watched ratio; True once the primary
        ratio's ticket has emerged (and on every later call). Epochs must increase; ``epoch``
        defaults to the last recorded one plus 1, so calls alone count 1, 2, 3, ..."""
        last = self.history.epochs(self.ratios[0])
        epoch = (last[-1] + 1 if last else 1) if epoch is None else int(epoch)
        if last and epoch <= last[-1]:
            raise UserError(
                f"EarlyBird.step(epoch={epoch}) after epoch {last[-1]}; pass increasing epochs "
                "or none (to count calls), and load_state_dict() before resuming"
            )
        drawn = {r: self.graph.draw(r, epoch=epoch, **self._draw_options) for r in self.ratios}
        masks = {ratio: ticket.mask() for ratio, ticket in drawn.items()}
        _check_ranks_agree(masks, epoch, self._device)
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
            if waiting and distance is not None and distance < self.epsilon:
                emerging[ratio] = distance
        for ratio, distance in distributed.broadcast_object(emerging).items():
            ticket = self._latest[ratio]
            provenance = {"epsilon": self.epsilon, "window": self.window, "window_max": distance}
            self.tickets[ratio] = replace(ticket, extra={**ticket.extra, "earlybird": provenance})
            self.emerged_epoch[ratio] = epoch

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
        return self.step(epoch)

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
            latest = {
                float(e["ratio"]): Ticket.from_dict(e["ticket"], where) for e in state["latest"]
            }
            tickets = {
                float(e["ratio"]): Ticket.from_dict(e["ticket"], where) for e in state["emerged"]
            }
            emerged = {float(e["ratio"]): int(e["epoch"]) for e in state["emerged"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: not a valid Early-Bird state ({exc})") from None
        self.history, self._latest, self.tickets = history, latest, tickets
        self.emerged_epoch = {r: emerged.get(r) for r in self.ratios}


def _check_ratios(ratio: float | Sequence[float]) -> tuple[float, ...]:
    ratios = (ratio,) if isinstance(ratio, (int, float)) else tuple(ratio)
    if not ratios:
        raise UserError("EarlyBird ratio: give at least one pruning ratio, e.g. 0.3")
    bad = [r for r in ratios if not 0 < r < 1]
    if bad:
        raise UserError(f"EarlyBird ratio {bad} must each lie in the open interval (0, 1)")
    if len(set(ratios)) != len(ratios):
        raise UserError(f"EarlyBird ratio {list(ratios)} lists a ratio twice")
    return tuple(float(r) for r in ratios)


def mask_digest(mask: np.ndarray) -> int:
    """A 62-bit hash of a boolean mask (non-negative, so its negation fits an int64)."""
    packed = np.packbits(np.asarray(mask, dtype=bool).ravel())
    digest = hashlib.blake2b(packed.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def _check_ranks_agree(masks: dict[float, np.ndarray], epoch: int, device: torch.device) -> None:
    """UserError on every rank when data-parallel ranks drew different masks: the min and the
    max of each mask's digest over ranks (one all-reduce of digests and their negations)."""
    if not distributed.is_initialized():
        return
    digests = torch.tensor([mask_digest(m) for m in masks.values()], dtype=torch.int64)
    extremes = distributed.all_reduce_min(torch.cat([digests, -digests]).to(device)).tolist()
    lowest, highest = extremes[: len(masks)], [-e for e in extremes[len(masks) :]]
    differing = [r for r, lo, hi in zip(masks, lowest, highest, strict=True) if lo != hi]
    if differing:
        raise UserError(
            f"Early-Bird epoch {epoch}: data-parallel ranks drew different masks at ratio "
            f"{', '.join(f'{r:g}' for r in differing)}; every rank must train the same replica "
            "(wrap the model in DistributedDataParallel and average BatchNorm statistics)"
        )


def _as_words(packed: np.ndarray) -> np.ndarray:
    """View packed mask rows as uint64 words; the zero padding never counts as a difference."""
    pad = -packed.shape[1] % 8
    return np.ascontiguousarray(np.pad(packed, ((0, 0), (0, pad)))).view(np.uint64)


def _tensor_to_numpy(value: Tensor | np.ndarray) -> np.ndarray:
    return value.cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)

"""The ticket: which channels of each prunable group survive, and the mask distance.

A :class:`Ticket` is pure data. It names every prunable channel group of a dense network
(keyed by the name of the group's root module, see :mod:`ebcompress.channels.graph`), its dense
width and the sorted indices of the channels kept. Flattened over the groups in their
order it is a boolean mask with one bit per prunable channel, which is what the Early-Bird
mask distance compares (You et al., ICLR 2020, Sec. 3.3).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ebcompress.atomic import write_text_atomic
from ebcompress.errors import UserError

TICKET_FORMAT = 1


def structure_fingerprint(widths: Mapping[str, int]) -> str:
    """A short hash of the prunable structure (group names and dense widths, in order)."""
    text = ";".join(f"{name}:{width}" for name, width in widths.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TicketBudget:
    """The cost budget a ticket was drawn to (:mod:`ebcompress.channels.budget`) and what
    its slim network reaches, as the channel graph's cost model counts it.

    ``measure`` is ``"macs"`` or ``"params"``; ``target`` and ``achieved`` are fractions of
    the dense network's count ``dense``; ``slim`` is the slim network's count.
    """

    measure: str
    target: float
    achieved: float
    dense: int
    slim: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "target": self.target,
            "achieved": self.achieved,
            "dense": self.dense,
            "slim": self.slim,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TicketBudget:
        measure = str(data["measure"])
        if measure not in ("macs", "params"):
            raise ValueError(f"budget measure {measure!r} is neither 'macs' nor 'params'")
        return cls(
            measure=measure,
            target=float(data["target"]),
            achieved=float(data["achieved"]),
            dense=int(data["dense"]),
            slim=int(data["slim"]),
        )


@dataclass(frozen=True)
class Ticket:
    """Kept channel indices per prunable group, plus where they came from.

    ``kept[name]`` is a sorted tuple of channel indices into the dense group of width
    ``widths[name]``. ``ratio`` is the requested pruning ratio (fraction removed); the
    achieved one is :attr:`pruned_fraction`, which ``min_keep``, ``max_group_ratio`` and
    ``round_to`` can move.

    Typed provenance that applying the ticket, or trusting it, depends on:

    ``ignored_layers``
        names of the modules given as ``ignored_layers`` when the groups were traced (a
        container stands for all its submodules); :func:`ebcompress.channels.slim.slim`,
        :func:`ebcompress.channels.slim.masked_equivalent` and :func:`ebcompress.load` replay them.
    ``capped``
        group name -> the limit it stopped at (``"max_group_ratio"`` or ``"min_keep"``):
        the global ranking wanted to remove more of these groups than the limits allow.
    ``zero_init_bns``
        BatchNorms whose scales were all zero when the groups were traced (timm's
        ``zero_init_last``, torchvision's ``zero_init_residual``); they were left out of their
        group's importance so they could not sink it (:mod:`ebcompress.channels.zero_init`).
    ``input_shape``
        one sample's shape (``(C, H, W)``) the groups were traced with, or None; ``slim``
        traces with a random input of this shape when given none.
    ``kept_dense``
        group name -> why it is not in the ticket: the groups ebcompress cannot slim exactly
        (or the probe found torch-pruning slims wrongly); ``slim`` keeps them out of its trace
        so that it finds the ticket's groups.
    ``budget``
        the :class:`TicketBudget` the ticket was drawn to, or None (drawn at ``ratio``; then
        ``ratio`` is the one the budget search chose).

    ``extra`` holds optional annotations (draw options, Early-Bird's emergence record) that
    nothing applying the ticket reads.
    """

    kept: dict[str, tuple[int, ...]]
    widths: dict[str, int]
    ratio: float
    epoch: int | None = None
    importance: str = "bn_gamma"
    model_name: str | None = None
    fingerprint: str = ""
    ignored_layers: tuple[str, ...] = ()
    capped: dict[str, str] = field(default_factory=dict)
    zero_init_bns: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None
    kept_dense: dict[str, str] = field(default_factory=dict)
    budget: TicketBudget | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if list(self.kept) != list(self.widths):
            raise ValueError("Ticket.kept and Ticket.widths must name the same groups in order")
        unknown = sorted(set(self.capped) - set(self.widths))
        if unknown:
            raise ValueError(f"Ticket.capped names groups the ticket does not have: {unknown}")
        object.__setattr__(self, "ignored_layers", tuple(self.ignored_layers))
        object.__setattr__(self, "zero_init_bns", tuple(self.zero_init_bns))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        for name, idx in self.kept.items():
            width = self.widths[name]
            if not idx:
                raise ValueError(f"Ticket group {name!r} keeps no channel")
            if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in idx):
                raise ValueError(f"Ticket group {name!r}: kept indices must be ints")
            steps = np.diff(np.asarray(idx))
            if (steps <= 0).any() or idx[0] < 0 or idx[-1] >= width:
                raise ValueError(
                    f"Ticket group {name!r}: kept indices must be sorted, unique, in [0, {width})"
                )
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", structure_fingerprint(self.widths))

    # ------------------------------------------------------------------ views
    @property
    def num_channels(self) -> int:
        return sum(self.widths.values())

    @property
    def num_kept(self) -> int:
        return sum(len(k) for k in self.kept.values())

    @property
    def pruned_fraction(self) -> float:
        return 1.0 - self.num_kept / self.num_channels

    def kept_counts(self) -> dict[str, int]:
        return {name: len(idx) for name, idx in self.kept.items()}

    def pruned(self, name: str) -> list[int]:
        """Indices of the channels removed from group ``name``."""
        keep = set(self.kept[name])
        return [i for i in range(self.widths[name]) if i not in keep]

    def mask(self) -> np.ndarray:
        """Flattened boolean mask over all prunable channels, True where a channel is kept."""
        out = np.zeros(self.num_channels, dtype=bool)
        offset = 0
        for name, width in self.widths.items():
            out[offset + np.asarray(self.kept[name], dtype=np.int64)] = True
            offset += width
        return out

    @classmethod
    def from_mask(cls, mask: np.ndarray, widths: Mapping[str, int], **meta: Any) -> Ticket:
        """Inverse of :meth:`mask`: split a flat keep-mask back into groups."""
        mask = np.asarray(mask, dtype=bool)
        if mask.size != sum(widths.values()):
            raise ValueError(
                f"mask has {mask.size} bits, the groups have {sum(widths.values())} channels"
            )
        kept, offset = {}, 0
        for name, width in widths.items():
            kept[name] = tuple(np.flatnonzero(mask[offset : offset + width]).tolist())
            offset += width
        return cls(kept=kept, widths=dict(widths), **meta)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TICKET_FORMAT,
            "ratio": self.ratio,
            "epoch": self.epoch,
            "importance": self.importance,
            "model_name": self.model_name,
            "fingerprint": self.fingerprint,
            "num_channels": self.num_channels,
            "num_kept": self.num_kept,
            "ignored_layers": list(self.ignored_layers),
            "capped": dict(self.capped),
            "zero_init_bns": list(self.zero_init_bns),
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "kept_dense": dict(self.kept_dense),
            "budget": None if self.budget is None else self.budget.to_dict(),
            "extra": dict(self.extra),
            "groups": [
                {"name": name, "width": self.widths[name], "kept": list(self.kept[name])}
                for name in self.widths
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "ticket") -> Ticket:
        try:
            if data.get("format") != TICKET_FORMAT:
                raise UserError(f"{where}: unsupported ticket format {data.get('format')!r}")
            groups = data["groups"]
            extra = dict(data.get("extra") or {})
            # tickets written before these fields were typed kept them in ``extra``
            untyped = {key: extra.pop(key) for key in ("input_shape", "kept_dense") if key in extra}
            input_shape = data.get("input_shape", untyped.get("input_shape"))
            kept_dense = data.get("kept_dense", untyped.get("kept_dense"))
            budget = data.get("budget")  # tickets written before budgets have none
            return cls(
                kept={g["name"]: tuple(int(i) for i in g["kept"]) for g in groups},
                widths={g["name"]: int(g["width"]) for g in groups},
                ratio=float(data["ratio"]),
                epoch=data.get("epoch"),
                importance=str(data.get("importance", "bn_gamma")),
                model_name=data.get("model_name"),
                fingerprint=str(data.get("fingerprint", "")),
                # tickets written before these fields existed read as "none"
                ignored_layers=tuple(str(n) for n in data.get("ignored_layers") or ()),
                capped={str(k): str(v) for k, v in (data.get("capped") or {}).items()},
                zero_init_bns=tuple(str(n) for n in data.get("zero_init_bns") or ()),
                input_shape=None if input_shape is None else tuple(int(d) for d in input_shape),
                kept_dense={str(k): str(v) for k, v in (kept_dense or {}).items()},
                budget=None if budget is None else TicketBudget.from_dict(budget),
                extra=extra,
            )
        # AttributeError: a list or number where the JSON needs an object (``.items()``)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}: not a valid ticket ({exc}); re-run the search") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ticket as JSON atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ticket:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ticket file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"ticket file {str(path)!r} is not valid JSON (line {exc.lineno})"
            ) from None
        except (UnicodeDecodeError, OSError) as exc:
            raise UserError(f"ticket file {str(path)!r} cannot be read as text ({exc})") from None
        return cls.from_dict(data, where=f"ticket file {str(path)!r}")


def mask_distance(a: Ticket | np.ndarray, b: Ticket | np.ndarray) -> float:
    """Normalised Hamming distance between two masks: 0 = identical, 1 = complementary.

    The Early-Bird paper's mask distance (You et al., ICLR 2020, Sec. 3.3), computed over
    all prunable channels. Tickets must describe the same structure.
    """
    if isinstance(a, Ticket) and isinstance(b, Ticket) and a.fingerprint != b.fingerprint:
        raise ValueError("mask_distance: the tickets describe different networks")
    ma = a.mask() if isinstance(a, Ticket) else np.asarray(a, dtype=bool)
    mb = b.mask() if isinstance(b, Ticket) else np.asarray(b, dtype=bool)
    if ma.shape != mb.shape:
        raise ValueError(f"mask_distance: masks of {ma.size} and {mb.size} channels")
    if ma.size == 0:
        raise ValueError("mask_distance: empty masks")
    return float(np.count_nonzero(ma != mb)) / ma.size

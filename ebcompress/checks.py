"""Argument checks at the top of the public entry points.

A value of the wrong type is a ``TypeError`` and a value that cannot work (a batch the model
does not run) a :class:`~ebcompress.errors.UserError`; either is one line that names the
argument and says what to pass, so a mistake never surfaces as an error from deep inside
torch or torch-pruning. Range checks stay with the code that owns the value
(:class:`~ebcompress.channels.draw_options.DrawOptions`, the window in
:mod:`ebcompress.earlybird.mask_history`, ...); these helpers make sure it is handed a number.
"""

from __future__ import annotations

import itertools
import numbers
import os
from pathlib import Path

import torch
from torch import nn

from ebcompress.errors import UserError

# torch's messages can run to pages (a printed graph); the one-line error keeps their start.
_DETAIL_CHARS = 200


def _got(value: object) -> str:
    """The type and the start of the repr, on one line: what the caller passed."""
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_number(value: object, name: str) -> float:
    """``value`` as a float when it is a real number (Python or NumPy, not a bool); otherwise
    a TypeError naming ``name``. NaN and infinities pass: the range check that follows decides.
    A tensor is refused (with the ``.item()`` hint): it would travel on into tickets and JSON."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = "; pass x.item()" if isinstance(value, torch.Tensor) else ""
        raise TypeError(f"{name} must be a number, got {_got(value)}{hint}")
    return float(value)


def check_int(value: object, name: str) -> int:
    """``value`` as an int (Python or NumPy integer, not a bool); otherwise a TypeError naming
    ``name`` (a float such as 2.0 is refused too: it usually is a computed value gone wrong)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_got(value)}")
    return int(value)


def check_module(value: object, name: str) -> nn.Module:
    """``value`` itself when it is a ``torch.nn.Module``; otherwise a TypeError naming ``name``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {_got(value)}")
    return value


def check_instance(
    value: object, cls: type | tuple[type, ...], name: str, *, how: str = ""
) -> None:
    """TypeError naming ``name`` unless ``value`` is a ``cls`` (one type or a tuple of them);
    ``how`` says where one comes from (e.g. ``"Ticket.load(path)"``)."""
    if not isinstance(value, cls):
        wanted = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        where = f" ({how})" if how else ""
        raise TypeError(f"{name} must be a {wanted}{where}, got {_got(value)}")


def check_path(value: object, name: str) -> Path:
    """``value`` as a Path when it is a str or ``os.PathLike``; otherwise a TypeError."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike path, got {_got(value)}")
    return Path(value)


def check_batch(value: object, name: str) -> torch.Tensor:
    """``value`` itself when it is a batch: a tensor with a batch axis holding >= 1 sample.

    Not a tensor: a TypeError (a NumPy array is named, with the conversion). No batch axis (a
    scalar) or an empty batch: a UserError. Whether the model accepts it (a missing channel
    axis, say) is :func:`check_runs`'s question.
    """
    if not isinstance(value, torch.Tensor):
        hint = "; convert it with torch.from_numpy(...)" if hasattr(value, "__array__") else ""
        raise TypeError(
            f"{name} must be a torch.Tensor batch such as torch.randn(1, 3, 224, 224), "
            f"got {_got(value)}{hint}"
        )
    if value.ndim < 1 or value.shape[0] < 1:
        raise UserError(
            f"{name} of shape {tuple(value.shape)} is not a batch: give (N, C, ...) with "
            "N >= 1, e.g. x.unsqueeze(0) for one sample"
        )
    return value


def check_runs(model: nn.Module, batch: torch.Tensor, name: str, *, fix: str = "") -> None:
    """UserError naming ``name`` unless ``model`` runs the first sample of ``batch``.

    One forward in eval mode under ``torch.no_grad()`` on the model's device; every module's
    train/eval flag is restored, nothing else is touched (eval-mode BatchNorm does not update
    its statistics). Any exception the forward raises is the model refusing this input, so it
    is reported with its first line and chained as the cause. ``fix`` replaces the default
    advice (a batch of the model's input shape).
    """
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = batch.device if first is None else first.device
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(batch[:1].to(device))
    except Exception as exc:  # any layer may reject the input, with any exception type
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + " ..."
        advice = fix or "pass a batch the model accepts (N, C, H, W at its input size, its dtype)"
        raise UserError(
            f"{name} of shape {tuple(batch.shape)} and dtype {str(batch.dtype).split('.')[-1]} "
            f"does not run through {type(model).__name__} ({type(exc).__name__}: {text}); "
            f"{advice}"
        ) from exc
    finally:
        for module, training in modes:
            module.training = training

"""Atomic, checksummed training checkpoints that survive crashes and full disks.

A checkpoint file is a short header line (format tag and the SHA-256 of the payload)
followed by the bytes of ``torch.save(state)``. :func:`save_checkpoint` writes a temporary
file in the same directory (:func:`ebcompress.atomic.atomic_path`), moves the current
``last.pt`` to ``prev.pt`` once it is complete and renames it into place, fsynced, so at
every instant at least one complete checkpoint is on disk. :func:`load_checkpoint` verifies
the checksum and falls back to ``prev.pt`` when ``last.pt`` is truncated or corrupted.

Loading uses ``torch.load(weights_only=True)`` only, so a state may hold tensors, dicts,
lists, tuples, strings, numbers, booleans and None; :func:`capture_rng_state` turns the
numpy and Python RNG states into such values.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebcompress.atomic import atomic_path, fsync_file
from ebcompress.errors import UserError

_MAGIC = b"EBCKPT1 "
_HEADER_LEN = len(_MAGIC) + 64 + 1  # tag, hex digest, newline
PREVIOUS_NAME = "prev.pt"

log = logging.getLogger(__name__)


def previous_path(path: Path) -> Path:
    """Where the checkpoint replaced by the latest save of ``path`` is kept."""
    return Path(path).with_name(PREVIOUS_NAME)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically, keeping the previous checkpoint as ``prev.pt``.

    Raises :class:`UserError` when the disk is full (or the write fails otherwise); the
    checkpoints already on disk are left untouched in that case.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(header + payload)
            # Rotated only once the new file is on the disk in full: a failed write or fsync
            # (a full disk) keeps both old checkpoints.
            fsync_file(tmp)
            if path.exists():
                os.replace(path, previous_path(path))
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise UserError(
            f"could not write checkpoint {path}: {reason}; the previous checkpoint is kept, "
            "free space and rerun with --resume"
        ) from exc


def _read_verified(path: Path) -> dict[str, Any]:
    """The state in ``path``; ValueError when it is truncated, corrupted or not a checkpoint."""
    data = path.read_bytes()
    header, payload = data[:_HEADER_LEN], data[_HEADER_LEN:]
    if not header.startswith(_MAGIC) or len(header) != _HEADER_LEN:
        raise ValueError("not an ebcompress checkpoint")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(_MAGIC) : -1]:
        raise ValueError("checksum mismatch (truncated or corrupted)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # the checksum matched, so this is a foreign or unsafe payload
        raise ValueError(f"unreadable payload ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise ValueError("payload is not a dict")
    return state


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The newest intact checkpoint at ``path`` (or its ``prev.pt``); None when none exists.

    A bad ``last.pt`` is named in a one-line warning and ``prev.pt`` is used instead;
    :class:`UserError` when every checkpoint present is bad.
    """
    path = Path(path)
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            state = _read_verified(candidate)
        except (OSError, ValueError) as exc:
            problems.append(f"{candidate} ({exc})")
            log.warning("checkpoint %s is unusable: %s; trying the previous one", candidate, exc)
            continue
        return state
    if problems:
        raise UserError(
            f"no usable checkpoint: {'; '.join(problems)}; delete {path.parent} and rerun "
            "with --resume to start this phase afresh"
        )
    return None


def remove_checkpoints(path: Path) -> None:
    """Delete ``path`` and its ``prev.pt`` (a fresh run must never fall back to a stale one)."""
    for candidate in (Path(path), previous_path(path)):
        candidate.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python RNG states as weights_only values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""Checkpoints: atomic replacement, checksum fallback, full disk, weights_only, RNG states."""

from __future__ import annotations

import errno
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ebcompress.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    previous_path,
    restore_rng_state,
    save_checkpoint,
)
from ebcompress.errors import UserError


def _state(value: float) -> dict:
    return {"epoch": int(value), "w": torch.full((3, 2), value), "nested": {"xs": [1, 2.5, "a"]}}


def test_round_trip_keeps_values(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(_state(1.0), path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1
    assert torch.equal(loaded["w"], torch.full((3, 2), 1.0))
    assert loaded["nested"] == {"xs": [1, 2.5, "a"]}


def test_missing_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "last.pt") is None


def test_previous_checkpoint_is_kept(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    save_checkpoint(_state(2.0), path)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(previous_path(path))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_last_falls_back_to_prev_with_warning(tmp_path, caplog, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    save_checkpoint(_state(2.0), path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ebcompress.engine.checkpoint"):
        loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1
    (record,) = caplog.records
    assert str(path) in record.getMessage() and "\n" not in record.getMessage()


def test_all_bad_is_user_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    save_checkpoint(_state(2.0), path)
    path.write_bytes(b"garbage")
    previous_path(path).write_bytes(b"")
    with pytest.raises(UserError, match="no usable checkpoint"):
        load_checkpoint(path)


def test_full_disk_leaves_previous_checkpoints_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    save_checkpoint(_state(2.0), path)

    def full_disk(target, data):
        with open(target, "wb") as handle:  # a partial temporary file, as a real ENOSPC leaves
            handle.write(data[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(UserError, match="disk is full"):
        save_checkpoint(_state(3.0), path)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(previous_path(path))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


def test_a_failed_fsync_keeps_both_previous_checkpoints(tmp_path, monkeypatch):
    """The rotation to prev.pt waits until the new file is on the disk: a full disk that
    shows only at fsync time must not cost last.pt, nor overwrite prev.pt."""
    import ebcompress.engine.checkpoint as checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)
    save_checkpoint(_state(2.0), path)

    def full_at_fsync(_path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "fsync_file", full_at_fsync)
    with pytest.raises(UserError, match="disk is full"):
        save_checkpoint(_state(3.0), path)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(previous_path(path))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]


class _Sneaky:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_payload_needing_unpickling_is_refused(tmp_path, capsys):
    # A valid checksum does not make an arbitrary pickle loadable: weights_only refuses it.
    path = tmp_path / "last.pt"
    save_checkpoint({"evil": _Sneaky()}, path)
    with pytest.raises(UserError, match="no usable checkpoint"):
        load_checkpoint(path)
    assert "unpickled" not in capsys.readouterr().out


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "last.pt"
    save_checkpoint({"rng": capture_rng_state()}, path)
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    restore_rng_state(load_checkpoint(path)["rng"])
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]

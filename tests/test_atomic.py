"""atomic.py: a reader sees the old file or the new one, and a failed write leaves no trace."""

from __future__ import annotations

import errno
import os

import pytest

from ebcompress.atomic import atomic_path, write_bytes_atomic, write_text_atomic


def test_success_replaces_the_file_and_leaves_only_it(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not replaced before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failure_inside_the_block_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(OSError, match="No space left"), atomic_path(target) as tmp:
        tmp.write_text("half of the ne")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failure_before_anything_was_written_creates_nothing(tmp_path):
    target = tmp_path / "ticket.json"
    with pytest.raises(ValueError), atomic_path(target):
        raise ValueError("the writer failed before opening the file")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OSError, match="Read-only"):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_temporary_name_is_hidden_and_keeps_the_suffix_only_when_asked(tmp_path):
    target = tmp_path / "model.pt2"
    with atomic_path(target) as plain:
        plain.write_bytes(b"x")
    with atomic_path(target, keep_suffix=True) as suffixed:
        suffixed.write_bytes(b"y")
    assert plain.name.startswith(".") and not plain.name.endswith(".pt2")
    assert suffixed.name.startswith(".") and suffixed.suffix == ".pt2"
    assert str(os.getpid()) in plain.name  # two processes never share one
    assert target.read_bytes() == b"y"


def test_write_text_atomic_writes_utf8(tmp_path):
    target = tmp_path / "report.md"
    write_text_atomic(target, "# Bericht — 5 µs\n")
    assert target.read_bytes() == "# Bericht — 5 µs\n".encode()

"""``--help`` is fast: it imports no torch, and it lists the methods the catalogue registers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ebcompress.methods.catalog import METHODS

COMMANDS = ["prune", "compare", "export", "bench", "report", "recipes", "flops", "plan"]


def _help_in_a_fresh_interpreter(*argv: str) -> tuple[str, list[str]]:
    """The help text of ``ebcompress *argv --help`` and the modules that printing it imported,
    from a fresh interpreter (this test process has long imported torch)."""
    code = (
        "import sys\n"
        "from ebcompress.cli import main\n"
        "try:\n"
        f"    main([*{list(argv)!r}, '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('\\0'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},  # wide: one line per method
    )
    return done.stdout, done.stderr.strip().split("\0")


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)])
def test_help_imports_no_torch(argv: list[str]) -> None:
    text, modules = _help_in_a_fresh_interpreter(*argv)
    assert "Usage:" in text and "--help" in text
    heavy = sorted(m for m in modules if m.split(".")[0] in {"torch", "timm", "torch_pruning"})
    assert not heavy, f"`ebcompress {' '.join(argv)} --help` imported {heavy[:5]}"


@pytest.mark.parametrize("command", ["prune", "compare"])
def test_help_lists_every_registered_method_with_its_summary(command: str) -> None:
    text, _ = _help_in_a_fresh_interpreter(command)
    for key, info in METHODS.items():
        assert f"{key}: {info.title}: {info.summary}" in " ".join(text.split()), key


def test_compare_runs_every_registered_method_by_default() -> None:
    text, _ = _help_in_a_fresh_interpreter("compare")
    assert f"[default: {','.join(METHODS.names())}]" in text

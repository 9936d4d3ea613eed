"""The engine never imports the recipe schema or the rest of the shell: it takes its own config
types (docs/architecture.md). Checked on the source of every engine module, imports inside
functions, relative imports and ``importlib.import_module("...")`` included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "ebcompress" / "engine"
# What core, engine and data must never import (the shell).
SHELL = ("recipe", "methods", "baselines", "run", "report", "cli")


def imported_modules(source: str, package: str) -> set[str]:
    """Every module named by an import statement anywhere in ``source`` (a module of
    ``package``), relative ones resolved, plus constant names given to ``import_module`` or
    ``__import__``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                found.add(str(first.value))
    return found


def shell_imports(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("ebcompress.") and m.split(".")[1] in SHELL)


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import torch\n"
        "def late():\n"
        "    from ebcompress.recipe import TrainConfig\n"
        "    from .. import methods\n"
        "    from ..run.state import RunState\n"
        "    importlib.import_module('ebcompress.cli')\n"
        "    __import__('ebcompress.report.build')\n"
        "from ebcompress.engine import distributed\n"
    )
    found = imported_modules(source, "ebcompress.engine")
    assert shell_imports(found) == [
        "ebcompress.cli",
        "ebcompress.methods",
        "ebcompress.recipe",
        "ebcompress.recipe.TrainConfig",
        "ebcompress.report.build",
        "ebcompress.run.state",
        "ebcompress.run.state.RunState",
    ]
    assert "ebcompress.engine.distributed" in found


def test_no_engine_module_imports_the_recipe_or_the_shell() -> None:
    modules = sorted(ENGINE.glob("*.py"))
    assert {"trainer.py", "loop.py", "state.py", "optim.py"} <= {m.name for m in modules}
    offending = {
        module.name: shell_imports(
            imported_modules(module.read_text(encoding="utf-8"), "ebcompress.engine")
        )
        for module in modules
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_importing_the_engine_does_not_load_the_channel_machinery() -> None:
    """The engine reaches the detector's collectives, not the detector: importing it (and with
    it the run state and the report) must not pay for torch-pruning's import."""
    code = (
        "import sys, ebcompress.engine.trainer, ebcompress.engine.distributed; "
        "print(sorted(m for m in ('torch_pruning', 'ebcompress.channels.graph') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

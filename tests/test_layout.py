"""The core never imports the shell (docs/architecture.md): checked on the source, transitively."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ebcompress"
CORE = tuple(f"channels.{m}" for m in ("ticket", "graph", "groups", "probe", "tp_compat", "slim"))
CORE += ("channels.zero_init", "channels.capped", "cost.flops")
CORE += tuple(f"earlybird.{m}" for m in ("detector", "sparsity", "learning", "mask_history"))
SHELL = ("cli", "recipe", "recipes", "run", "methods", "report", "baselines")


def _ebcompress_imports(module: str) -> set[str]:
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("ebcompress."):
                parts = name.split(".")[1:]
                for end in range(len(parts), 0, -1):  # the longest prefix that is a module
                    candidate = ".".join(parts[:end])
                    base = PACKAGE / candidate.replace(".", "/")
                    if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
                        found.add(candidate)
                        break
    return found


def test_the_core_does_not_import_the_shell_even_indirectly():
    seen, todo = set(), list(CORE)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_ebcompress_imports(module))
    shell = sorted(m for m in seen if m.split(".")[0] in SHELL)
    assert not shell, f"the core reaches shell modules: {shell}"
    assert {"channels.groups", "channels.probe", "channels.tp_compat"} <= seen

"""Which part of ebcompress may import which (docs/architecture.md, "Layers"), checked on the
source of every module, ``baselines/`` included, and on every import in it: those inside
functions and under ``TYPE_CHECKING`` too, since a lazy import is still a dependency."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where each installed package's source lives (pyproject's package-dir).
ROOTS = {
    "ebcompress": REPO / "ebcompress",
    "ebcompress.baselines": REPO / "baselines",
    "ebcompress.recipes": REPO / "recipes",
}

#: Top-level modules every layer may use; they import nothing of ebcompress but ``errors``.
HELPERS = frozenset({"errors", "atomic", "lazy", "modules", "registry", "checks"})
#: The core a user calls from their own training loop.
CORE = HELPERS | {"channels", "earlybird", "cost", "models"}
_ALL = CORE | {"engine", "data", "recipe", "methods", "baselines", "run", "deploy", "report"}

#: Each part of ebcompress -> what it may import besides itself: a part (``"engine"``) or one
#: module of a part (``"run.paths"``). Anything else is a layering error.
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "atomic": frozenset({"errors"}),
    "lazy": frozenset(),
    "modules": frozenset(),
    "registry": frozenset({"errors"}),
    "checks": frozenset({"errors"}),
    "models": HELPERS,
    "cost": HELPERS,
    "channels": HELPERS,
    "earlybird": HELPERS | {"channels"},
    "engine": CORE,
    "data": CORE,
    # other frameworks' loops (Lightning) drive the core as a user's own loop would
    "integrations": CORE,
    # the schema checks names against the method catalogue and the registries of the
    # precisions, data sets and export formats (imported when a recipe is validated)
    "recipe": CORE
    | {"methods.catalog", "engine.precision", "engine.preemption", "data"}
    | {"deploy.formats"},
    # run.paths imports nothing of ebcompress: the run directory's names, for any shell layer;
    # the catalogue lists the baselines with their torch-free options modules
    "methods": CORE
    | {"engine", "data", "recipe", "run.paths"}
    | {f"baselines.{m}_options" for m in ("lottery_ticket", "snip", "thinet")},
    "baselines": CORE | {"engine", "data", "recipe", "methods", "run.paths"},
    "deploy": CORE | {"run.paths"},
    # the report reads a finished run directory, never the pipeline that writes it
    "report": CORE | {"run.paths", "run.results", "run.state", "engine.metrics_file"},
    "run": frozenset(_ALL - {"run"}),
    "cli": frozenset(_ALL),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset({"lazy"}),  # PEP 562: names resolved by importlib on first use
    "recipes": frozenset(),  # the bundled YAML recipes
}

#: Heavy or optional dependencies the core must not load (``import ebcompress.channels``).
NOT_IN_THE_CORE = ("pydantic", "onnx", "safetensors")


def _module_files() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _module_files()


def _part(module: str) -> str:
    """The row of :data:`ALLOWED` a module belongs to."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


@cache
def _imports(module: str) -> tuple[tuple[str, int], ...]:
    """(imported name, line) for every import statement in ``module``, wherever it stands;
    ``from X import y`` names ``X.y`` when that is a module, else ``X``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}:{node.lineno}: use absolute imports"
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.append((name if name in MODULES else node.module, node.lineno))
    return tuple(found)


def _resolved(name: str) -> str | None:
    """The ebcompress module an imported name loads (its longest prefix that is one), or None."""
    parts = name.split(".")
    prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
    return next((p for p in prefixes if p in MODULES), None) if parts[0] == "ebcompress" else None


def _ebcompress_imports(module: str) -> set[str]:
    return {m for m in (_resolved(name) for name, _ in _imports(module)) if m is not None}


def _allows(importer: str, target: str) -> bool:
    part, wanted = _part(importer), target.split(".", 1)[1] if "." in target else "__init__"
    if _part(target) == part:
        return True
    return any(wanted == entry or wanted.startswith(entry + ".") for entry in ALLOWED[part])


def _cell(entries: frozenset[str]) -> str:
    """A row of ALLOWED as docs/architecture.md writes it: *helpers* and *core* abbreviated."""
    names, words = set(entries), []
    for word, group in (("core", CORE), ("helpers", HELPERS)):
        if group <= names:
            words.append(word)
            names -= group
    return ", ".join(words + [f"`{name}`" for name in sorted(names)]) or "nothing"


def test_the_architecture_document_states_the_same_table():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        f"| `{part}` | {_cell(entries)} |"
        for part, entries in ALLOWED.items()
        if f"| `{part}` | {_cell(entries)} |" not in text
    ]
    assert not missing, "docs/architecture.md, Layers, lacks the rows:\n" + "\n".join(missing)
    prose = " ".join(text.split())  # the definitions wrap across lines
    assert f"*helpers* = {', '.join(f'`{name}`' for name in sorted(HELPERS))}" in prose
    assert f"*core* = helpers, {_cell(CORE - HELPERS)}" in prose


def test_every_part_of_ebcompress_has_a_row_and_every_row_names_real_modules():
    parts = {_part(module) for module in MODULES}
    assert parts == set(ALLOWED), "add the new part to ALLOWED (and to docs/architecture.md)"
    for row, entries in ALLOWED.items():
        for entry in entries:
            assert f"ebcompress.{entry}" in MODULES, f"ALLOWED[{row!r}] names {entry!r}"


def test_every_import_follows_the_layering():
    wrong = [
        f"{MODULES[module].relative_to(REPO)}:{line} ({_part(module)}) imports {name}"
        for module in MODULES
        for name, line in _imports(module)
        if _resolved(name) is not None and not _allows(module, _resolved(name))
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_allowed_directions_have_no_cycle_between_parts():
    # a part may import a single module of a part above it (run.paths), never the whole part
    edges = {row: {e for e in entries if "." not in e} for row, entries in ALLOWED.items()}
    visiting, done = set(), set()

    def visit(part: str, path: tuple[str, ...]) -> None:
        assert part not in visiting, f"ALLOWED has a cycle: {' -> '.join((*path, part))}"
        if part in done:
            return
        visiting.add(part)
        for target in edges[part] - {part}:
            visit(target, (*path, part))
        visiting.discard(part)
        done.add(part)

    for part in edges:
        visit(part, ())


def test_no_two_modules_import_each_other_even_lazily():
    graph = {module: _ebcompress_imports(module) - {module} for module in MODULES}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for module in graph:
        if module not in index:
            connect(module)
    assert not cycles, f"modules that import each other: {cycles}"


def test_importing_the_channel_machinery_loads_no_schema_or_export_library():
    code = (
        "import json, sys\n"
        "import ebcompress.channels as channels\n"
        "for name in channels.__all__: getattr(channels, name)\n"  # PEP 562: load them all
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{NOT_IN_THE_CORE[:2]!r} or m.startswith('ebcompress'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    loaded = json.loads(out.splitlines()[-1])
    assert not [m for m in loaded if not m.startswith("ebcompress")], loaded
    assert {"ebcompress.channels.slim", "ebcompress.channels.tp_compat"} <= set(loaded)
    assert "ebcompress.recipe" not in loaded
    # torch-pruning imports timm, which imports safetensors: not ebcompress's doing. But no
    # ebcompress module on this path imports it (nor the other two), also lazily, later.
    reached, todo = set(), list(loaded)
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(_ebcompress_imports(module))
    heavy = [
        f"{module} imports {name}"
        for module in sorted(reached)
        for name, _ in _imports(module)
        if name.split(".")[0] in NOT_IN_THE_CORE
    ]
    assert not heavy, heavy

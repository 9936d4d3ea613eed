"""Nothing in ebcompress (or its baselines) deserialises with pickle or reads YAML unsafely.

The package's sources are parsed (not grepped, so a call split over lines or an aliased
import is still seen) and every call is checked against the rules below. The checker is
tested on snippets first, so a rule that stopped matching would fail here too.

Allowed on purpose: ``torch.jit.load`` (TorchScript's own format, used to verify a file
ebcompress just wrote), ``numpy.load`` with ``allow_pickle`` left False, ``yaml.safe_load``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ebcompress", "baselines")

# Calls that run a pickle (or arbitrary code) whatever their arguments.
FORBIDDEN = {
    **dict.fromkeys(
        ["pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads"],
        "unpickles",
    ),
    **dict.fromkeys(["dill.load", "dill.loads", "joblib.load", "pandas.read_pickle"], "unpickles"),
    **dict.fromkeys(["marshal.load", "marshal.loads", "shelve.open"], "unmarshals"),
    **dict.fromkeys(
        [
            "yaml.load",
            "yaml.load_all",
            "yaml.unsafe_load",
            "yaml.unsafe_load_all",
            "yaml.full_load",
            "yaml.full_load_all",
        ],
        "reads YAML with a loader that can build Python objects; use yaml.safe_load",
    ),
    "eval": "evaluates a string as code",
    "exec": "executes a string as code",
}
# Calls that are safe only with a keyword set to a literal value.
REQUIRED_KEYWORD = {
    "torch.load": ("weights_only", True),
    "torch.serialization.load": ("weights_only", True),
}
REJECTED_KEYWORD = {"numpy.load": ("allow_pickle", True)}


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it stands for (``np`` -> ``numpy``, ``load`` -> ``torch.load``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(func: ast.expr, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None  # a method of some object, e.g. model.eval()
    parts.append(names.get(func.id, func.id))
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        kw.arg == name and isinstance(kw.value, ast.Constant) and kw.value.value is value
        for kw in call.keywords
    )


def unsafe_calls(source: str, filename: str = "<snippet>") -> list[str]:
    """``file:line: call - why`` for every unsafe call in ``source``."""
    tree = ast.parse(source, filename)
    names = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, names)
        if name is None:
            continue
        why = FORBIDDEN.get(name)
        if name in REQUIRED_KEYWORD:
            keyword, value = REQUIRED_KEYWORD[name]
            if not _keyword_is(node, keyword, value):
                why = f"needs {keyword}={value!r}"
        if name in REJECTED_KEYWORD:
            keyword, value = REJECTED_KEYWORD[name]
            named = [kw for kw in node.keywords if kw.arg == keyword]
            if named and not _keyword_is(node, keyword, not value):
                why = f"must not set {keyword}={value!r}"
        if why:
            found.append(f"{filename}:{node.lineno}: {name} - {why}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import torch\ntorch.load(\n    'x.pt',\n    map_location='cpu',\n)",
        "from torch import load\nload('x.pt')",
        "import torch as T\nT.load('x.pt')",
        "import pickle\npickle.loads(b'')",
        "import pickle as p\np.load(open('f', 'rb'))",
        "from pickle import loads\nloads(b'')",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import yaml\nyaml.full_load(text)",
        "import numpy as np\nnp.load('m.npy', allow_pickle=True)",
        "import numpy\nnumpy.load('m.npy', allow_pickle=flag)",
        "eval(user_text)",
        "import marshal\nmarshal.loads(b'')",
    ],
)
def test_the_checker_finds_unsafe_calls(snippet: str) -> None:
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(buf, map_location='cpu', weights_only=True)",
        "import torch\ntorch.jit.load('m.ts')",
        "import yaml\nyaml.safe_load(text)",
        "import numpy as np\nnp.load('m.npy')\nnp.load('m.npy', allow_pickle=False)",
        "model.eval()\nmodel.load_state_dict(state)",
        "from safetensors.torch import load_file\nload_file('m.safetensors')",
    ],
)
def test_the_checker_lets_safe_calls_pass(snippet: str) -> None:
    assert unsafe_calls(snippet) == []


def test_the_package_never_unpickles_or_loads_yaml_unsafely() -> None:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20  # the scan really covers the package
    found = [
        problem
        for path in files
        for problem in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert found == [], "\n".join(found)

"""Lazy public names for a package (PEP 562): a name's module is imported on first use.

``import ebcompress`` then costs nothing, ``ebcompress.channels`` does not pull in the recipe
schema, and ``ebcompress --help`` and the recipe's option classes do not wait for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose globals are ``namespace`` and
    whose public ``names`` map to the modules defining them. A resolved name is stored in
    ``namespace``, so later lookups are plain attribute reads.

    A public name must not equal one of the package's submodules: importing the submodule
    binds its name in the package, which would then shadow the public object.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__

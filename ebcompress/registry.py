"""One small generic registry: named objects of one kind (fvcore's ``common/registry.py``).

``METHODS = Registry[MethodInfo]("method")`` maps names to objects. :meth:`Registry.register`
adds one, as a decorator (``@FORMATS.register("onnx")``) or a call; a name registered twice
is a ``ValueError``, since two pieces of code claiming one name is a bug, not a user's
mistake. :meth:`Registry.get` raises a :class:`~ebcompress.errors.UserError` listing the
registered names, because the name it is given comes from a recipe or the command line.

:meth:`Registry.register_lazy` records a name whose object lives in a module that is imported
on the first ``get``: listing the names (for ``--help`` or a recipe check) then imports
nothing heavy, and the module need not import the registry's owner back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from ebcompress.errors import UserError

T = TypeVar("T")


def check_target(target: str) -> str:
    """``target`` itself when it looks like ``"package.module:attribute"``; ValueError if not."""
    module, sep, attribute = target.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"target {target!r} must look like 'package.module:attribute'")
    return target


def import_target(target: str) -> Any:
    """The object ``"package.module:attribute"`` names, importing its module."""
    module, _, attribute = check_target(target).partition(":")
    return getattr(importlib.import_module(module), attribute)


class _Lazy:
    """A registered object not imported yet."""

    def __init__(self, target: str) -> None:
        self.target = check_target(target)


class Registry(Generic[T]):
    """Names -> objects of one ``kind`` (used in messages: ``"method"``, ``"data set"``).

    Names keep their registration order, which is the order listings show.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | _Lazy] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that
        does so. ``ValueError`` when ``name`` is taken."""
        if obj is None:

            def decorator(item: T) -> T:
                self._add(name, item)
                return item

            return decorator
        self._add(name, obj)
        return obj

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` for the object ``target`` (``"package.module:attribute"``),
        imported on the first :meth:`get`. ``ValueError`` when ``name`` is taken."""
        self._add(name, _Lazy(target))

    def _add(self, name: str, entry: T | _Lazy) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The object registered as ``name``; a UserError listing the names otherwise."""
        if name not in self._entries:
            raise UserError(self.unknown(name))
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            entry = self._entries[name] = import_target(entry.target)
        return entry  # type: ignore[return-value]  # a loaded _Lazy is the registered T

    def check(self, name: str) -> str:
        """``name`` itself when registered, else a ValueError with :meth:`unknown`'s message:
        for schema validators, which report a ValueError with the field's path."""
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return name

    def unknown(self, name: object) -> str:
        """The one-line message for a name that is not registered: what exists instead."""
        listed = ", ".join(self._entries) or "(none registered)"
        return f"{self.kind} {name!r} is not one of {listed}"

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in registration order (lazy objects are imported)."""
        return [(name, self.get(name)) for name in self._entries]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order (nothing is imported)."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

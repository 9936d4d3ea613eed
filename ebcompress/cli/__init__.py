"""The ``ebcompress`` command line. Each sub-command lives in its own module of this package."""

from ebcompress.cli.app import app, main

__all__ = ["app", "main"]

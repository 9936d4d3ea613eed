"""What several commands' options share: help texts and the parsing of ``--ratios``."""

from __future__ import annotations

from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS

RECIPE_HELP = "a shipped recipe name (see `ebcompress recipes`) or a path to a YAML file"
#: What ``--method`` and ``--methods`` accept: the registered methods, each on its own line
#: below the options (a blank line is a paragraph break in typer's help).
METHODS_EPILOG = "Methods:\n\n" + "\n\n".join(
    f"{key}: {info.title}: {info.summary}" for key, info in METHODS.items()
)


def parse_ratios(text: str, option: str) -> list[float]:
    """``0.3,0.5`` as numbers; a one-line UserError naming ``option`` otherwise."""
    try:
        points = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        points = []
    if not points:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.3,0.5")
    return points

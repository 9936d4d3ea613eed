"""The typer application and the one place where user errors become exit code 2.

Sub-command modules register themselves on :data:`app` when imported; :func:`main` imports
them all, runs the app, and turns a :class:`~ebcompress.errors.UserError` (or a typer usage
error) into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

import typer
from typer.exceptions import TyperException

from ebcompress.errors import UserError

app = typer.Typer(
    name="ebcompress",
    help="Early-Bird ticket training and graph-aware channel slimming for PyTorch CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module adds its commands to `app` on import.
COMMAND_MODULES = (
    "ebcompress.cli.info",
    "ebcompress.cli.prune",
    "ebcompress.cli.compare",
    "ebcompress.cli.export",
    "ebcompress.cli.report",
    "ebcompress.cli.plan",
)

EXIT_USER_ERROR = 2
# typer turns Ctrl-C into Exit(130) and, outside standalone mode, returns an Exit's code.
EXIT_INTERRUPTED = 130
# File-system failures that are the machine's state, not a bug: reported in one line.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency, not a command still to be written
                raise


def fail(message: str) -> None:
    """Print one line to stderr and exit with the user-error status."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(EXIT_USER_ERROR)


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """Warnings (capped groups, unchecked learning) as one ``warning:`` line above the bars,
    not Python's two-line file-and-source format."""
    from ebcompress.engine.progress import log

    log(f"warning: {' '.join(str(message).split())}")


class Terminated(BaseException):
    """SIGTERM arrived outside a training loop (which stops at a step boundary itself).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way up
    mistakes it for an error of the code it interrupted."""


@contextlib.contextmanager
def _sigterm_stops_the_command() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` wherever it lands (loading
    data, tracing, slimming, exporting, writing the report), as Ctrl-C raises
    KeyboardInterrupt: every file is written atomically, so the run resumes from what is on
    disk. Inside training the engine's own handler takes over and checkpoints first."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    warnings.showwarning = _one_line_warning
    _register_commands()
    try:
        with _sigterm_stops_the_command():
            status = app(args=argv, standalone_mode=False)
    except Terminated:
        fail("stopped by SIGTERM; resume with --resume")
    except UserError as exc:
        fail(str(exc))
    except TyperException as exc:  # typer's (vendored click) usage errors
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        # No arguments at all prints the help and raises an error without a message.
        fail(f"{exc.format_message() or 'no command given'}{hint}")
    except typer.Abort:
        fail("aborted")
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        fail("interrupted; resume with --resume")
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        fail(
            f"{exc.strerror}{where}; free space or fix permissions, then rerun (--resume continues)"
        )
    if status == EXIT_INTERRUPTED:
        fail("interrupted; resume with --resume")
    if isinstance(status, int) and status:
        raise SystemExit(status)

"""``ebcompress report``: redraw a finished run's report.md, report.json and plots/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from ebcompress.cli.app import app
from ebcompress.run.paths import RunPaths


def open_file(path: Path) -> str | None:
    """Open ``path`` in the desktop's default viewer without waiting for it; return why not
    when there is no desktop (a headless server, SSH without X forwarding).

    ``webbrowser`` is not used: without a display it may start a text browser that takes
    over the terminal.
    """
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]
        return None
    if sys.platform == "darwin":
        command = ["open", str(path)]
    elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        command = ["xdg-open", str(path)]
    else:
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not installed"
    subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return None


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a finished run directory (runs/NAME)"),
    open_report: bool = typer.Option(False, "--open", help="open report.md when done"),
) -> None:
    """Regenerate report.md, report.json and plots/ from a run directory alone (no model)."""
    from ebcompress.report.build import write_report

    paths = RunPaths(run_dir)
    result = write_report(run_dir)
    plots = result["plots"]
    count = len(plots["written"])
    print(
        f"wrote {paths.report_md}, {paths.report_json.name} and {count} "
        f"plot{'' if count == 1 else 's'} in {paths.plots}"
    )
    for name, reason in plots["skipped"].items():
        print(f"skipped {name}.png: {reason}")
    if open_report:
        why_not = open_file(paths.report_md)
        if why_not:
            print(f"not opened: {why_not}; open {paths.report_md} yourself")

"""Kill anywhere, resume exactly; corrupt checkpoints, NaNs, Ctrl-C and full disks recover.

One shortened quickstart run (``python -m ebcompress prune`` subprocesses) is SIGKILLed in
the search, between the search and the first retrain checkpoint (slimming), in the retrain,
and while it writes its report, with a ``--resume`` after each kill; its final ticket,
weights and report.json (wall-clock fields aside) must equal those of an uninterrupted run
started beside it. Kill points are found by polling the run directory. While the first
process lives, a second run into its directory is refused. Before the first resume, the
newest search checkpoint is corrupted: the resume must name it in one warning line and
continue from ``prev.pt``. A copy of the killed run diverges under ``train.lr=1e6`` and
recovers with a lower lr. Ctrl-C and a full disk are simulated in-process.

The harness (subprocess start, polling, comparison) is benchmarks/fault_injection.py's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ebcompress.cli import main
from ebcompress.engine.checkpoint import load_checkpoint
from ebcompress.engine.metrics_file import read_entries

_HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "fault_injection.py"
_spec = importlib.util.spec_from_file_location("fault_injection", _HARNESS)
fi = importlib.util.module_from_spec(_spec)
sys.modules["fault_injection"] = fi  # dataclasses look their module up while being defined
_spec.loader.exec_module(fi)

SEARCH = Path("checkpoints") / "search"


def run_cli(argv: list[str]) -> tuple[int | str | None, list[str], str]:
    """Exit status, stderr lines and stdout of ``ebcompress ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue().splitlines(), out.getvalue()


def _search_checkpoints_saved(run_dir: Path) -> bool:
    """Two search epochs checkpointed (last.pt and prev.pt), the ticket not yet drawn."""
    folder = run_dir / SEARCH
    return (
        (folder / "last.pt").is_file()
        and (folder / "prev.pt").is_file()
        and not (run_dir / "ticket.json").exists()
    )


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


@dataclass
class KilledRun:
    """What the kill-and-resume chain saw; the tests below assert on it."""

    root: Path
    run_dir: Path
    reference_dir: Path
    landed: dict[str, str] = field(default_factory=dict)  # kill point -> phase at the kill
    retrain_checkpoint_at_slimming_kill: bool = True
    second_writer: tuple[int | str | None, list[str]] | None = None  # status, stderr lines
    corrupt_resume_stderr: list[str] = field(default_factory=list)
    corrupt_resume_stdout: str = ""
    final_exit: int | None = None
    reference_exit: int | None = None


KILL_POINTS = {
    "slimming": lambda p: p.ticket and p.retrain_epochs == 0,
    "retrain": lambda p: p.retrain_epochs >= 1 and not p.exported,
    "report": lambda p: p.finished and not p.report,
}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> KilledRun:
    root = tmp_path_factory.mktemp("kill")
    chain = KilledRun(root, root / "run", root / "reference")
    run = chain.run_dir
    # The uninterrupted run goes beside the chain (two cores, one thread each).
    reference = fi.start_prune(chain.reference_dir, resume=False, stdout=root / "reference.log")

    # 1. In the search: while the run lives a second writer is refused; kill after 2 epochs.
    first = fi.start_prune(run, resume=False, stdout=root / "1-search.log")
    assert fi.wait_for(first, run, lambda _: fi.lock_holder(run) == first.pid) is not None
    chain.second_writer = run_cli(fi.prune_argv(run, resume=True))[:2]
    at = fi.kill_when(first, run, lambda _: _search_checkpoints_saved(run))
    chain.landed["search"] = at.phase if at else "exited"
    shutil.copytree(run, root / "diverge")  # a run killed after search epoch 2, for the NaN test
    _corrupt(run / SEARCH / "last.pt")

    # 2. Resume past the corrupt checkpoint; kill before the first retrain checkpoint.
    second = fi.start_prune(
        run, resume=True, stdout=root / "2-slimming.log", stderr=root / "2-slimming.err"
    )
    at = fi.kill_when(second, run, KILL_POINTS["slimming"])
    chain.landed["slimming"] = at.phase if at else "exited"
    chain.retrain_checkpoint_at_slimming_kill = (run / "checkpoints/retrain/last.pt").exists()
    chain.corrupt_resume_stderr = (root / "2-slimming.err").read_text().splitlines()
    chain.corrupt_resume_stdout = (root / "2-slimming.log").read_text()

    # 3. In the retrain, 4. while the report is written; 5. resume to the end.
    for point in ("retrain", "report"):
        process = fi.start_prune(run, resume=True, stdout=root / f"3-{point}.log")
        at = fi.kill_when(process, run, KILL_POINTS[point])
        chain.landed[point] = at.phase if at else "exited"
    chain.final_exit = fi.start_prune(run, resume=True, stdout=root / "5-final.log").wait()
    chain.reference_exit = reference.wait()
    return chain


@pytest.mark.slow
def test_kill_anywhere_then_resume_gives_the_uninterrupted_result(killed_run) -> None:
    assert killed_run.landed == {p: p for p in ("search", "slimming", "retrain", "report")}
    assert not killed_run.retrain_checkpoint_at_slimming_kill
    assert killed_run.reference_exit == 0
    assert killed_run.final_exit == 0, (killed_run.root / "5-final.log").read_text()[-2000:]
    expected = fi.comparable_result(killed_run.reference_dir)
    actual = fi.comparable_result(killed_run.run_dir)
    assert fi.differences(expected, actual) == []
    assert len(actual["weights"]) > 10 and actual["report"]["ticket"]["emerged"] is True
    assert not (killed_run.run_dir / "run.lock").exists()


@pytest.mark.slow
def test_a_second_run_into_a_live_run_directory_is_refused(killed_run) -> None:
    code, lines = killed_run.second_writer
    assert code == 2
    assert len(lines) == 1
    assert re.match(r"error: another ebcompress process \(pid \d+ on \S+\)", lines[0]), lines


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_named_and_the_previous_one_used(killed_run) -> None:
    lines = killed_run.corrupt_resume_stderr
    assert len(lines) == 1, lines
    assert str(SEARCH / "last.pt") in lines[0] and "checksum mismatch" in lines[0]
    assert "prev" in lines[0] or "previous" in lines[0]
    # prev.pt held epoch 1, so the resumed search trained epoch 2 again first.
    epochs = re.findall(r"^search (\d+)/", killed_run.corrupt_resume_stdout, re.MULTILINE)
    assert epochs[0] == "2", killed_run.corrupt_resume_stdout


@pytest.mark.slow
def test_a_diverged_loss_stops_in_one_line_and_resumes_with_a_lower_lr(killed_run) -> None:
    run = killed_run.root / "diverge"
    high = [*fi.QUICK_OVERRIDES, "train.lr=1e6"]
    code, lines, _ = run_cli(fi.prune_argv(run, resume=True, overrides=high))
    assert code == 2 and len(lines) == 1, lines
    assert re.search(r"NaN/inf at epoch 3, step \d+ of 4", lines[0]), lines[0]
    assert "checkpoint (epoch 2) is kept" in lines[0] and "--resume --set train.lr=" in lines[0]
    assert load_checkpoint(run / SEARCH / "last.pt")["epoch"] == 2
    assert [e["epoch"] for e in read_entries(run / "metrics.jsonl")] == [1, 2]
    assert not (run / "run.lock").exists()

    low = [*fi.QUICK_OVERRIDES, "train.lr=0.01"]
    code, lines, out = run_cli(fi.prune_argv(run, resume=True, overrides=low))
    assert code == 0, lines
    assert "base lr changed from 0.1 to 0.01 on resume" in out
    search = [e["epoch"] for e in read_entries(run / "metrics.jsonl") if e["phase"] == "search"]
    assert search[:3] == [1, 2, 3]
    health = json.loads((run / "report.json").read_text())["health"]
    assert "NaN/inf at epoch 3" in health["divergence"]
    assert any(flag.startswith("training diverged once") for flag in health["flags"])


def test_ctrl_c_is_one_line_and_leaves_the_run_resumable(tmp_path, monkeypatch) -> None:
    import ebcompress.run.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_run", interrupted)
    code, lines, _ = run_cli(fi.prune_argv(tmp_path / "run", resume=False))
    assert code == 2 and lines == ["error: interrupted; resume with --resume"]
    assert not (tmp_path / "run" / "run.lock").exists()


def test_a_full_disk_mid_run_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch) -> None:
    """The disk fills while the first epoch's metrics line is appended: one line, exit 2, no
    lock left, and no checkpoint of an epoch whose record could not be written."""
    import errno

    import ebcompress.engine.phase_files as engine

    def disk_full(path, entry):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(engine, "append_entry", disk_full)
    run = tmp_path / "run"
    code, lines, _ = run_cli(fi.prune_argv(run, resume=False))
    assert code == 2 and len(lines) == 1, lines
    assert "No space left on device" in lines[0] and "metrics.jsonl" in lines[0]
    assert not (run / "run.lock").exists()
    assert not (run / SEARCH / "last.pt").exists()

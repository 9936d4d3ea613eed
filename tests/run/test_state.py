"""state.json: one reader with one error everywhere, typed results that read every version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_fakes import make_fake_run_dir

from ebcompress.cli.app import EXIT_USER_ERROR, main
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.report.build import build_report, write_report
from ebcompress.run.compare import run_compare
from ebcompress.run.paths import ComparePaths, RunPaths
from ebcompress.run.pipeline import run_pipeline
from ebcompress.run.results import RunResults
from ebcompress.run.state import (
    RunState,
    existing_state,
    prepare_run_dir,
    read_state,
    record_divergence,
    write_state,
)

BROKEN = {
    "truncated": b'{"status": "fin',
    "empty": b"",
    "binary": b"\xff\xfe\x00garbage",
    "a list": b"[1, 2]",
    "no status": b'{"method": "eb"}',
    "unknown status": b'{"status": "done"}',
    "results of another shape": b'{"status": "finished", "results": {"run": "x"}}',
    "divergences not a list": b'{"status": "search", "divergences": "nan"}',
}


def _broken_run(root: Path, content: bytes) -> Path:
    run_dir = make_fake_run_dir(root, status="search")
    RunPaths(run_dir).state.write_bytes(content)
    return run_dir


def _cli_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize("content", BROKEN.values(), ids=BROKEN.keys())
def test_a_bad_state_json_is_the_same_one_line_error_everywhere(tmp_path, capsys, content):
    run_dir = _broken_run(tmp_path / "cmp" / "eb_p50", content)
    with pytest.raises(UserError) as direct:
        read_state(run_dir)
    message = str(direct.value)
    assert "\n" not in message
    assert str(RunPaths(run_dir).state) in message and "--overwrite" in message

    assert _cli_error(capsys, ["report", str(run_dir)]) == message
    with pytest.raises(UserError) as resumed:
        run_pipeline(load_recipe("quickstart"), run_dir, resume=True, progress=False)
    assert str(resumed.value) == message
    recipe = load_recipe("quickstart")
    with pytest.raises(UserError) as compared:
        run_compare(recipe, tmp_path / "cmp", methods=["eb"], ratios=[0.5], progress=False)
    assert str(compared.value) == message


def test_overwrite_replaces_a_run_whose_state_is_unreadable(tmp_path):
    run_dir = _broken_run(tmp_path / "run", BROKEN["truncated"])
    prepare_run_dir(run_dir, resume=False, overwrite=True)
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []


def test_a_folder_without_state_json_is_no_run(tmp_path):
    with pytest.raises(UserError, match=r"holds no ebcompress run \(no state.json\)"):
        read_state(tmp_path)
    assert existing_state(tmp_path) is None
    with pytest.raises(UserError, match="does not exist; give a run directory"):
        read_state(tmp_path / "missing")


def test_divergences_are_carried_from_state_to_state(tmp_path):
    write_state(tmp_path, RunState(status="search", method="eb"))
    record_divergence(tmp_path, "NaN/inf at epoch 3")
    write_state(tmp_path, RunState(status="retrain", method="eb"))
    state = read_state(tmp_path)
    assert (state.status, state.method) == ("retrain", "eb")
    assert state.divergences == ("NaN/inf at epoch 3",) and state.updated is not None


def test_results_round_trip_exactly(tmp_path):
    stored = json.loads(RunPaths(make_fake_run_dir(tmp_path / "eb")).state.read_text())
    results = RunResults.from_dict(stored["results"])
    assert results.to_dict() == stored["results"]
    assert results.search.emerged_epochs is not None and results.search.extra == {}
    ns = json.loads(RunPaths(make_fake_run_dir(tmp_path / "ns", method="ns")).state.read_text())
    sparsity = load_recipe("quickstart").prune.sparsity
    assert RunResults.from_dict(ns["results"]).search.extra == {"sparsity": sparsity}


def _as_written_before(results: dict, *, fields_of: str) -> dict:
    """``results`` as an earlier pipeline wrote them: the 0.1 layout (cb5d1f4) had no chance
    level, skipped images or retrain.schedule; the last one (8562af8) no skipped_files."""
    old = json.loads(json.dumps(results))
    del old["data"]["skipped_files"]
    if fields_of == "0.1":
        del old["retrain"]["schedule"]
        for key in ("chance_top1", "skipped_images"):
            del old["data"][key]
    return old


@pytest.mark.parametrize("version", ["0.1", "8562af8"])
def test_runs_written_by_earlier_versions_still_report(tmp_path, version):
    run_dir = make_fake_run_dir(tmp_path / "run", final_top1=0.9)
    path = RunPaths(run_dir).state
    state = json.loads(path.read_text())
    state["results"] = _as_written_before(state["results"], fields_of=version)
    path.write_text(json.dumps(state))

    results = read_state(run_dir).results
    assert results.retrain.schedule == "continue"  # start epoch > 0: the dense schedule went on
    assert results.data.skipped_files == () and results.data.skipped_images == 0
    assert results.data.chance_top1 == (None if version == "0.1" else 0.1)
    report = write_report(run_dir)
    assert report["retrain"]["schedule"] == "continue" and report["health"]["status"] == "ok"


def test_compare_reads_finished_runs_back_by_attribute(tmp_path, monkeypatch):
    import ebcompress.run.compare as compare_module

    out = ComparePaths(tmp_path)
    for method in ("eb", "ns"):
        write_report(make_fake_run_dir(out.run(method, 0.3), method=method))
    monkeypatch.setattr(compare_module, "run_pipeline", lambda *a, **k: pytest.fail("ran again"))
    result = run_compare(load_recipe("quickstart"), tmp_path, methods=["eb", "ns"], ratios=[0.3])
    eb = build_report(out.run("eb", 0.3)).results
    assert result["rows"][0]["run_dir"] == "eb_p30"
    assert result["rows"][0]["test_top1"] == eb.accuracy.test_top1
    assert result["rows"][0]["seconds"] == eb.cost.total_seconds
    assert result["rows"][0]["macs"] == eb.model.slim.macs
    assert [r["health"] for r in result["rows"]] == ["ok", "ok"]
    assert out.md.is_file() and out.plot.is_file()

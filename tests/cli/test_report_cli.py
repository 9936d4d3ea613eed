"""``ebcompress report``: regenerates the same report from a run directory alone."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from run_fakes import make_fake_run_dir

import ebcompress.cli.report as report_cli
import ebcompress.report.build as report_build  # the command imports it when it runs
from ebcompress.cli.app import EXIT_USER_ERROR, main


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A finished EB run (no model/, no checkpoints/) after one `ebcompress report`."""
    run_dir = make_fake_run_dir(tmp_path_factory.mktemp("runs") / "eb", num_groups=8)
    main(["report", str(run_dir)])
    return run_dir


def user_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USER_ERROR
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


def test_report_writes_markdown_json_and_plots(reported):
    for name in ("report.md", "report.json"):
        assert (reported / name).is_file()
    report = json.loads((reported / "report.json").read_text())
    assert sorted(report["plots"]["written"]) == sorted(
        ["mask_distance_matrix", "emergence", "channels_per_layer", "curves", "cost"]
    )
    assert all((reported / path).is_file() for path in report["plots"]["written"].values())
    assert report["recipe"]["prune"]["method"] == "eb"
    assert "seconds" not in report["cost"]["phases"][0]  # wall time only under "timing"
    assert set(report["timing"]["seconds_per_phase"]) == {"search", "retrain"}


def test_report_md_embeds_every_plot_with_a_relative_path(reported):
    markdown = (reported / "report.md").read_text()
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", markdown)
    assert len(images) == 5
    for path in images:
        assert not path.startswith("/") and (reported / path).is_file()
    assert markdown.startswith("# quickstart — eb\n")
    assert "<details><summary>Per-epoch metrics" in markdown
    assert "| retrain |" in markdown


def test_report_regenerates_identical_json(reported, capsys, monkeypatch):
    before = (reported / "report.json").read_bytes()
    shutil.rmtree(reported / "plots")
    (reported / "report.md").unlink()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("report needs no checkpoint"))
    main(["report", str(reported)])
    assert (reported / "report.json").read_bytes() == before
    assert (reported / "plots" / "mask_distance_matrix.png").is_file()
    out = capsys.readouterr().out
    assert f"wrote {reported / 'report.md'}, report.json and 5 plots" in out


def test_open_without_a_display_says_so_and_succeeds(tmp_path, capsys, monkeypatch):
    no_plots = {"plots": {"written": {}, "skipped": {}}}
    # Only the --open path is under test here; the drawing is tested above.
    monkeypatch.setattr(report_build, "write_report", lambda run_dir: no_plots)
    monkeypatch.setattr(report_cli.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    main(["report", str(tmp_path), "--open"])
    out = capsys.readouterr().out
    assert (
        f"not opened: no display (DISPLAY and WAYLAND_DISPLAY are unset); open "
        f"{tmp_path / 'report.md'} yourself" in out
    )


def test_open_file_starts_xdg_open_on_a_desktop(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(report_cli.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(report_cli.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(report_cli.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    assert report_cli.open_file(tmp_path / "report.md") is None
    assert started == [["xdg-open", str(tmp_path / "report.md")]]
    monkeypatch.setattr(report_cli.shutil, "which", lambda name: None)
    assert report_cli.open_file(tmp_path / "report.md") == "xdg-open is not installed"


def test_skipped_plots_are_listed(tmp_path, capsys, monkeypatch):
    skipped = {"emergence": "no masks/ (only Early-Bird search records a mask per epoch)"}
    result = {"plots": {"written": {"cost": "plots/cost.png"}, "skipped": skipped}}
    # How the lines read; that a baseline run really skips them is tested in test_plots.py.
    monkeypatch.setattr(report_build, "write_report", lambda run_dir: result)
    main(["report", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("report.json and 1 plot in " + str(tmp_path / "plots"))
    assert out[1:] == [f"skipped emergence.png: {skipped['emergence']}"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist; give a run directory"),
        ("empty", "holds no ebcompress run (no state.json)"),
        ("unfinished", "has not finished (status 'retrain')"),
        ("corrupt", "state.json' is not valid JSON"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, case, message):
    run_dir = tmp_path / case
    if case == "empty":
        run_dir.mkdir()
    elif case == "unfinished":
        make_fake_run_dir(run_dir, status="retrain")
    elif case == "corrupt":
        run_dir.mkdir()
        (run_dir / "state.json").write_text('{"status": "fin')
    line = user_error(capsys, ["report", str(run_dir)])
    assert line.startswith("error: ") and message in line
    assert not (run_dir / "report.json").exists()

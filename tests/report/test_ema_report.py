"""The report of a run with ``train.ema``: an EMA column per epoch and the last retraining
epoch's EMA top-1 in the summary; a run without one reads as before."""

from __future__ import annotations

import json

from run_fakes import make_fake_run_dir

from ebcompress.report.build import build_report, render_markdown
from ebcompress.run.paths import RunPaths


def test_the_report_shows_the_ema_accuracy_only_when_the_run_kept_one(tmp_path):
    plain = render_markdown(build_report(make_fake_run_dir(tmp_path / "plain")))
    assert "EMA" not in plain

    run_dir = make_fake_run_dir(tmp_path / "ema")
    metrics = RunPaths(run_dir).metrics
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    for index, line in enumerate(lines):
        line["ema_test_top1"] = 0.5 + index / 1000
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    last = 0.5 + (len(lines) - 1) / 1000  # the last line is the last retraining epoch
    assert lines[-1]["phase"] == "retrain"

    text = render_markdown(build_report(run_dir))
    assert "| test top-5 | EMA test top-1 |" in text
    assert f"| {100 * lines[0]['ema_test_top1']:.2f} % |" in text
    assert f"The weights' moving average (`train.ema`) reached top-1 {100 * last:.2f} %" in text

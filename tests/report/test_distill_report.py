"""The report of a run whose retraining distilled from a teacher (``retrain.distill``): the
cost table names the teacher's MACs and FLOPs in the phase, the training section the teacher;
a run without one reads as before, and a teacher's phase never stands in for dense training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from run_fakes import DENSE_MACS, TRAIN_SAMPLES, make_fake_run_dir

from ebcompress.cost.flops import TrainingLedger
from ebcompress.report.build import build_report, render_markdown
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import DistillSummary, RunResults
from ebcompress.run.state import RunState, read_state

SHA = "0123456789abcdef" + "f" * 48


def _distilled(results: RunResults, distill: DistillSummary) -> RunResults:
    """``results`` with its retrain phase charged ``distill``'s teacher, as the ledger does."""
    ledger = TrainingLedger()
    for p in results.cost.phases:
        teacher = distill.teacher_macs if p.phase == "retrain" else 0
        ledger.add(p.phase, macs_per_sample=p.macs_per_sample, samples=p.samples // p.epochs,
                   epochs=p.epochs, seconds=p.seconds, joules=p.joules,
                   teacher_macs_per_sample=teacher)  # fmt: skip
    return replace(
        results,
        cost=replace(results.cost, ledger=ledger),
        retrain=replace(results.retrain, distill=distill),
    )


def _write(run_dir: Path, results: RunResults) -> None:
    state = replace(read_state(run_dir), results=results)
    RunPaths(run_dir).state.write_text(json.dumps(RunState.to_dict(state)), encoding="utf-8")


def test_the_report_names_the_teacher_and_its_share_of_the_retraining_flops(tmp_path) -> None:
    plain = render_markdown(build_report(make_fake_run_dir(tmp_path / "plain")))
    assert "teacher" not in plain and "distil" not in plain

    run_dir = make_fake_run_dir(tmp_path / "distilled")
    distill = DistillSummary("teacher.safetensors", SHA, DENSE_MACS, alpha=0.7, temperature=3.0)
    _write(run_dir, _distilled(read_state(run_dir).results, distill))
    text = render_markdown(build_report(run_dir))

    retrain = read_state(run_dir).results.cost.ledger.phases["retrain"]
    assert retrain.teacher_flops == 2 * DENSE_MACS * retrain.samples > 0
    assert retrain.samples == TRAIN_SAMPLES * retrain.epochs
    assert "## Training cost (FLOPs = 3 x 2 x MACs x samples + 2 x teacher MACs x samples)" in text
    cost = text.split("## Training cost")[1].splitlines()
    row = next(line for line in cost if line.startswith("| retrain |"))
    assert row.startswith("| retrain | ") and "+ teacher 2.00 M (forward only) |" in row
    search = next(line for line in cost if line.startswith("| search |"))
    assert "teacher" not in search
    teacher_flops = f"{retrain.teacher_flops / 1e9:.2f} G"
    assert (
        "retrain: distilled from `teacher.safetensors` (sha256 `0123456789abcdef…`, alpha = 0.7, "
        f"T = 3); the teacher's forward passes, {teacher_flops} FLOPs (2 x its MACs x samples, "
        "no backward), are included in the phase's training FLOPs." in text
    )
    assert "It distilled from `teacher.safetensors`" in text.split("## Training\n")[1]


def test_the_dense_teacher_is_named_and_its_phase_is_no_dense_reference(tmp_path) -> None:
    from ebcompress.report.plots import _dense_extrapolation

    run_dir = make_fake_run_dir(tmp_path / "dense")
    results = read_state(run_dir).results
    distill = DistillSummary("dense", None, DENSE_MACS, alpha=0.5, temperature=4.0)
    distilled = _distilled(results, distill)
    _write(run_dir, distilled)
    text = render_markdown(build_report(run_dir))
    assert "retrain: distilled from the run's dense network (the one the ticket was drawn " in text
    assert "(alpha = 0.5, T = 4)" in text and "sha256" not in text.split("## Training cost")[1]

    # a retraining at the dense MACs (nothing pruned) with a teacher does not stand for dense
    # training when the plot extrapolates time from a phase: its time includes the teacher's
    at_dense = TrainingLedger()
    at_dense.add("retrain", macs_per_sample=DENSE_MACS, samples=TRAIN_SAMPLES, seconds=2.0)
    plain = replace(results, cost=replace(results.cost, ledger=at_dense))
    assert _dense_extrapolation(plain, {"retrain": 2.0}) is not None
    assert _dense_extrapolation(_distilled(plain, distill), {"retrain": 2.0}) is None

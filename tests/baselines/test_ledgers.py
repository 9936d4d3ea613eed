"""Each baseline end to end through the pipeline: its ledger has the method's phases."""

import pytest
from tiny_runs import tiny_recipe

from ebcompress.cost.flops import TrainingLedger
from ebcompress.run.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def _run(tmp_path, **sections) -> tuple[dict, dict]:
    report = run_pipeline(tiny_recipe(**sections), tmp_path / "run", device="cpu", progress=False)
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    return report, phases


def _dense_schedule_flops(report) -> int:
    return TrainingLedger.dense_reference(report["model"]["dense"]["macs"], 64, 2)


def test_network_slimming_ledger_is_dense_full_plus_slim_retrain(tmp_path):
    report, phases = _run(tmp_path, prune={"method": "ns"})
    dense, slim = report["model"]["dense"]["macs"], report["model"]["slim"]["macs"]
    assert slim < dense
    assert (phases["search"]["epochs"], phases["search"]["macs_per_sample"]) == (2, dense)
    assert (phases["retrain"]["epochs"], phases["retrain"]["macs_per_sample"]) == (2, slim)
    assert phases["search"]["training_flops"] == _dense_schedule_flops(report)


def test_unstructured_lottery_ticket_costs_two_dense_schedules(tmp_path):
    report, phases = _run(tmp_path, prune={"method": "lt", "lt": {"granularity": "unstructured"}})
    assert list(phases) == ["search", "retrain"]
    assert report["cost"]["total_flops"] == 2 * _dense_schedule_flops(report)


def test_unstructured_snip_costs_one_dense_schedule(tmp_path):
    report, phases = _run(
        tmp_path, prune={"method": "snip", "snip": {"granularity": "unstructured"}}
    )
    assert list(phases) == ["retrain"]
    assert report["cost"]["total_flops"] == _dense_schedule_flops(report)

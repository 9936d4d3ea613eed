"""report.md's "Forecast against measured" section: shown only with a forecast.json, per phase
of the run's ledger (a distillation teacher's forward passes on both sides), and never at the
cost of the report."""

from __future__ import annotations

from dataclasses import replace

import pytest
from run_fakes import DENSE_MACS, TRAIN_SAMPLES, make_fake_run_dir

from ebcompress.cost.flops import TrainingLedger
from ebcompress.cost.forecast import Forecast, PhaseRate, Scenario
from ebcompress.report.build import write_report
from ebcompress.report.forecast import forecast_section
from ebcompress.run.paths import RunPaths
from ebcompress.run.state import read_state

SECTION = "## Forecast against measured"


def _forecast(method: str = "eb", joules: float | None = None) -> Forecast:
    def rate(macs: int, estimated: bool = False) -> PhaseRate:
        return PhaseRate(
            macs, TRAIN_SAMPLES, 1.0, 0.2, 0.05, joules=joules, macs_estimated=estimated
        )

    return Forecast(
        recipe="quickstart",
        method=method,
        device="cpu",
        machine={"date": "2026-12-02T06:00:00+00:00", "processor": "x86_64", "torch_threads": 1},
        timed_steps=40,
        rates={"eb": {"search": rate(DENSE_MACS), "retrain": rate(DENSE_MACS // 3, True)}},
        scenarios=(Scenario("eb", "ticket at epoch 5", {"search": 5, "retrain": 20}),),
    )


@pytest.fixture
def run_dir(tmp_path):
    return make_fake_run_dir(tmp_path / "run", joules=True)


def test_no_forecast_no_section(run_dir) -> None:
    write_report(run_dir)
    assert SECTION not in RunPaths(run_dir).report_md.read_text()


def test_each_phase_beside_its_forecast_at_the_epochs_it_ran(run_dir) -> None:
    paths = RunPaths(run_dir)
    _forecast(joules=10.0).save(paths.forecast)
    write_report(run_dir)
    text = paths.report_md.read_text()
    assert SECTION in text
    section = text.split(SECTION)[1]
    ledger = read_state(run_dir).results.cost.ledger
    rows = {
        line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")
    }
    search, retrain = rows["search"], rows["retrain"]
    epochs = ledger.phases["search"].epochs
    assert f"| search | {epochs} |" in search and "+0.0 %" in search  # exact FLOPs
    assert f"{epochs * 1.0:.1f} s" in search  # 1 s per epoch forecast, at the epochs run
    assert "*" in retrain and "stand-in ticket" in section  # estimated MACs, said so
    assert "J" in search  # energy forecast and measured (the fake run measured it)


def test_a_method_the_forecast_does_not_cover_is_named(run_dir) -> None:
    paths = RunPaths(run_dir)
    _forecast().save(paths.forecast)
    lt_dir = make_fake_run_dir(run_dir.parent / "lt", method="lt")
    _forecast().save(RunPaths(lt_dir).forecast)
    write_report(lt_dir)
    assert "not method `lt`" in RunPaths(lt_dir).report_md.read_text()


def test_a_damaged_forecast_is_a_line_not_a_failed_report(run_dir) -> None:
    paths = RunPaths(run_dir)
    paths.forecast.write_text("{not json")
    write_report(run_dir)
    section = paths.report_md.read_text().split(SECTION)[1]
    assert "Not shown: cannot read forecast" in section


def test_a_distilled_phase_is_checked_with_its_teacher_and_a_forecast_without_it_is_named(
    run_dir,
) -> None:
    results = read_state(run_dir).results
    ledger = TrainingLedger()
    ledger.add("retrain", macs_per_sample=DENSE_MACS // 3, samples=TRAIN_SAMPLES, epochs=2,
               seconds=2.0, teacher_macs_per_sample=DENSE_MACS)  # fmt: skip
    distilled = replace(results, cost=replace(results.cost, ledger=ledger))
    paths = RunPaths(run_dir)
    forecast = _forecast()
    forecast.save(paths.forecast)  # made without retrain.distill
    section = "\n".join(forecast_section(paths, distilled))
    assert "retrain: the run's distillation teacher ran 2.00 M MACs per sample, the " in section
    rate = replace(forecast.rates["eb"]["retrain"], macs_per_sample=DENSE_MACS // 3,
                   teacher_macs_per_sample=DENSE_MACS)  # fmt: skip
    replace(forecast, rates={"eb": {"retrain": rate}}).save(paths.forecast)
    section = "\n".join(forecast_section(paths, distilled))
    assert "distillation teacher" not in section and "| retrain | 2 |" in section
    assert "+0.0 %" in section.split("| retrain | 2 |")[1].splitlines()[0]  # like with like

"""``ebcompress plan`` and ``ebcompress prune --plan``: the table, the JSON, the run's
forecast.json and report section, and user mistakes as one line with exit code 2."""

from __future__ import annotations

import json

import pytest

from ebcompress.cli import main
from ebcompress.cost.forecast import Forecast
from ebcompress.run.paths import RunPaths

TINY = [
    "data.train_subset=96",
    "data.test_subset=32",
    "train.epochs=3",
    "train.milestones=[2]",
    "train.batch_size=32",
    "model.kwargs={width_mult: 0.125}",
    "prune.window=2",
    "prune.epsilon=1.0",
    "prune.learning_margin=0.01",
    "retrain.epochs=2",
]
SETS = [arg for s in TINY for arg in ("--set", s)]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_plan_prints_a_table_and_writes_the_forecast(capsys, tmp_path) -> None:
    out_file = tmp_path / "forecast.json"
    argv = ["plan", "--recipe", "quickstart", *SETS, "--steps", "1", "--out", str(out_file)]
    code, out, err = run_cli(capsys, *argv, "--device", "cpu")
    assert code == 0, err
    text = " ".join(out.split())
    for needed in ("quickstart on cpu", "dense", "EB", "NS", "search", "retrain", "total"):
        assert needed in text, needed
    assert "energy not measured here" in text or " J " in text
    forecast = Forecast.load(out_file)
    assert forecast.recipe == "quickstart" and set(forecast.rates) == {"dense", "eb", "ns"}


@pytest.mark.slow
def test_plan_json_lists_the_forecast_and_every_estimate(capsys) -> None:
    argv = ["plan", "--recipe", "quickstart", *SETS, "--steps", "1", "--json", "--device", "cpu"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    data = json.loads(out)
    forecast = Forecast.from_dict(data["forecast"])
    assert len(data["estimates"]) == len(forecast.estimates())
    for row in data["estimates"]:
        assert row["flops"] > 0 and row["wall_seconds"] > row["train_seconds"] > 0


@pytest.mark.slow
def test_prune_plan_records_the_forecast_and_the_report_compares(capsys, tmp_path) -> None:
    run_dir = tmp_path / "run"
    argv = ["prune", "--recipe", "quickstart", *SETS, "--out", str(run_dir), "--plan"]
    code, out, err = run_cli(capsys, *argv, "--device", "cpu")
    assert code == 0, err
    paths = RunPaths(run_dir)
    forecast = Forecast.load(paths.forecast)
    report = paths.report_md.read_text()
    assert "## Forecast against measured" in report
    section = report.split("## Forecast against measured")[1].splitlines()
    search = next(line for line in section if line.startswith("| search |"))
    assert "+0.0 %" in search  # the search's FLOPs are forecast exactly
    assert forecast.method == "eb"
    # a resumed run keeps the forecast it has ...
    before = paths.forecast.read_bytes()
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 0, err
    assert paths.forecast.read_bytes() == before
    # ... and a finished run without one gets none: it would come after the training
    paths.forecast.unlink()
    code, _, err = run_cli(capsys, *argv, "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--plan" in err
    assert not paths.forecast.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["plan", "--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
        (["plan", "--recipe", "quickstart", "--set", "train.epoch=3"], "train.epoch"),
        (["plan", "--recipe", "quickstart", "--steps", "0"], "--steps"),
        (["plan", "--recipe", "quickstart", "--out", "/no/such/dir/f.json"], "--out"),
        (["plan", "--recipe", "quickstart", "--device", "tpu"], "--device"),
        (["prune", "--recipe", "quickstart", "--plan", "--ratios", "0.3,0.5"], "--plan"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, argv, expected) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err + out


def test_prune_plan_checks_the_run_directory_before_forecasting(
    capsys, tmp_path, monkeypatch
) -> None:
    import ebcompress.run.plan as plan_module

    def no_forecast(*args: object, **kwargs: object) -> None:
        raise AssertionError("forecast made for a run that is refused")

    monkeypatch.setattr(plan_module, "make_forecast", no_forecast)
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, _, err = run_cli(
        capsys, "prune", "--recipe", "quickstart", "--out", str(folder), "--plan"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds no ebcompress run" in err

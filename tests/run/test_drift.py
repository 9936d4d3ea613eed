"""A resumed run refuses a recipe that changes its result, and records what it accepts."""

from __future__ import annotations

import json

import pytest

from ebcompress.cli import main
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.run.drift import Change, check_resume, recipe_changes
from ebcompress.run.pipeline import run_pipeline


def _unfinished_run(run_dir, overrides=()):
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(load_recipe("quickstart", list(overrides)).to_yaml())
    (run_dir / "state.json").write_text('{"status": "search", "method": "eb"}')
    return run_dir


def test_changes_are_dotted_fields_with_both_values() -> None:
    stored = {"seed": 0, "prune": {"ratio": 0.3, "lt": {"rewind_epoch": 0}}, "x": 1}
    given = {"seed": 0, "prune": {"ratio": 0.5, "lt": {"rewind_epoch": 2}}, "y": 2}
    assert recipe_changes(stored, given) == [
        Change("prune.ratio", 0.3, 0.5),
        Change("prune.lt.rewind_epoch", 0, 2),
        Change("x", 1, None),
        Change("y", None, 2),
    ]


def test_a_result_changing_resume_is_refused_naming_each_field(tmp_path) -> None:
    run_dir = _unfinished_run(tmp_path / "run")
    before = (run_dir / "recipe.yaml").read_text()
    changed = load_recipe("quickstart", ["prune.ratio=0.5", "seed=3", "data.num_workers=2"])
    with pytest.raises(UserError) as caught:
        run_pipeline(changed, run_dir, resume=True, progress=False)
    message = str(caught.value)
    assert "prune.ratio: 0.3 -> 0.5" in message and "seed: 0 -> 3" in message
    assert "num_workers" not in message and "--force-resume" in message
    assert (run_dir / "recipe.yaml").read_text() == before
    assert not (run_dir / "recipe_history.jsonl").exists()


def test_harmless_changes_pass_and_are_recorded(tmp_path) -> None:
    run_dir = _unfinished_run(tmp_path / "run")
    given = load_recipe("quickstart", ["data.num_workers=2", "train.lr=0.01"])
    accepted = check_resume(run_dir, given)
    assert {c.field for c in accepted} == {"data.num_workers", "train.lr"}
    (entry,) = [json.loads(line) for line in (run_dir / "recipe_history.jsonl").open()]
    assert entry["forced"] is False
    assert {"field": "train.lr", "stored": 0.1, "given": 0.01} in entry["changes"]


def test_force_resume_accepts_and_records_that_it_was_forced(tmp_path) -> None:
    run_dir = _unfinished_run(tmp_path / "run")
    accepted = check_resume(run_dir, load_recipe("quickstart", ["prune.epsilon=0.2"]), force=True)
    assert accepted == [Change("prune.epsilon", 0.1, 0.2)]
    entry = json.loads((run_dir / "recipe_history.jsonl").read_text())
    assert entry["forced"] is True


def test_the_cli_refusal_is_one_line_exit_2(tmp_path, capsys) -> None:
    run_dir = _unfinished_run(tmp_path / "run")
    argv = ["prune", "--recipe", "quickstart", "--out", str(run_dir), "--resume"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--set", "prune.window=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "prune.window: 5 -> 3" in err[0]


def test_a_run_from_before_new_fields_is_compared_with_what_it_did(tmp_path) -> None:
    run_dir = _unfinished_run(tmp_path / "run")
    stored = (run_dir / "recipe.yaml").read_text()
    old = stored.replace("  max_group_ratio: 0.9\n", "").replace("  schedule: restart\n", "")
    old = old.replace("  learning_margin: 0.2\n", "")
    assert old != stored
    (run_dir / "recipe.yaml").write_text(old)
    with pytest.raises(UserError) as caught:  # today's defaults would change what it did
        check_resume(run_dir, load_recipe("quickstart"))
    assert "prune.max_group_ratio: 1.0 -> 0.9" in str(caught.value)
    assert "retrain.schedule: 'continue' -> 'restart'" in str(caught.value)
    assert "learning_margin" not in str(caught.value)
    same = ["prune.max_group_ratio=1.0", "retrain.schedule=continue"]
    assert check_resume(run_dir, load_recipe("quickstart", same)) == []


def test_skipping_bad_images_is_an_allowed_recovery(tmp_path) -> None:
    run_dir = _unfinished_run(tmp_path / "run")
    accepted = check_resume(run_dir, load_recipe("quickstart", ["data.skip_bad_images=true"]))
    assert [c.field for c in accepted] == ["data.skip_bad_images"]

"""retrain.distill end to end on the digits: the teacher each method hands the retraining, its
cost in the ledger and results, resumes mid-retrain and past the search, and a file teacher's
checksum and mistakes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_search_result import TINY

import ebcompress.engine.phase_files as phase_files
import ebcompress.run.pipeline as pipeline
from ebcompress.baselines.lottery_ticket import LotteryTicket
from ebcompress.cost.flops import count_flops
from ebcompress.engine.checkpoint import load_checkpoint
from ebcompress.errors import UserError
from ebcompress.methods.eb_train import EarlyBirdTrain
from ebcompress.models import build_model
from ebcompress.recipe import load_recipe
from ebcompress.run.drift import check_resume
from ebcompress.run.init_weights import with_init_checksum
from ebcompress.run.paths import RunPaths
from ebcompress.run.pipeline import run_pipeline
from ebcompress.run.results import RunResults

DISTILL = [*TINY, "retrain.distill={}", "retrain.distill.alpha=0.7"]
EARLY = ["prune.window=2", "prune.epsilon=0.3"]  # EB's ticket emerges at epoch 2 of 3
SIZE = (1, 16, 16)  # the quickstart's digits


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _results(run_dir: Path) -> dict:
    stored = json.loads(RunPaths(run_dir).state.read_text())["results"]
    assert RunResults.from_dict(stored).to_dict() == stored  # the summary loses nothing
    return stored


def _spy_teachers(monkeypatch) -> list:
    """Collect the Distillation each retraining gets."""
    seen: list = []
    real = pipeline.distillation

    def spy(run, outcome, file_teacher):
        distill = real(run, outcome, file_teacher)
        seen.append(distill)
        return distill

    monkeypatch.setattr(pipeline, "distillation", spy)
    return seen


def _as_if_killed_after_the_search(reference: Path, copy: Path, method: str) -> None:
    """``reference`` copied to ``copy`` without anything the retraining wrote."""
    shutil.copytree(reference, copy)
    shutil.rmtree(copy / "checkpoints" / "retrain")
    shutil.rmtree(copy / "model")
    for name in ("report.json", "report.md"):
        (copy / name).unlink()
    (copy / "state.json").write_text(json.dumps({"status": "retrain", "method": method}))
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["phase"] == "search")
    )


@pytest.mark.slow
def test_eb_distils_from_the_ticket_epochs_net_charges_it_and_resumes_mid_retrain(
    tmp_path, monkeypatch
) -> None:
    recipe = load_recipe("quickstart", [*DISTILL, *EARLY])
    reference = tmp_path / "reference"
    teachers = _spy_teachers(monkeypatch)
    report = run_pipeline(recipe, reference, progress=False)
    assert report["ticket"]["emerged"] and report["ticket"]["epoch"] == 2

    # the teacher is the dense net as the search left it: at the ticket's epoch
    (distill,) = teachers
    searched = load_checkpoint(reference / "checkpoints" / "search" / "last.pt")
    assert searched["epoch"] == report["search"]["epochs"]
    _assert_same(distill.teacher.state_dict(), searched["model"])
    assert not distill.teacher.training and distill.config.alpha == 0.7

    # the teacher's MACs as it runs, in eval mode (BatchNorm counts fewer ops than in training)
    dense_macs = count_flops(distill.teacher, SIZE, training=False).macs
    assert dense_macs < report["model"]["dense"]["macs"]
    summary = report["retrain"]["distill"]
    teacher_top1 = summary.pop("top1")
    assert summary == {
        "teacher": "dense", "sha256": None, "teacher_macs": dense_macs, "alpha": 0.7,
        "temperature": 4.0,
    }  # fmt: skip
    # the teacher's own accuracy is the search's last test top-1 (the same weights)
    search_lines = [
        json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()
    ]
    last_search = [e for e in search_lines if e.get("phase") == "search"][-1]
    assert teacher_top1 == pytest.approx(last_search["test_top1"])
    summary["top1"] = teacher_top1
    assert _results(reference)["retrain"]["distill"] == summary
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    search, retrain = phases["search"], phases["retrain"]
    assert "teacher_macs_per_sample" not in search
    assert retrain["teacher_macs_per_sample"] == dense_macs
    slim = report["model"]["slim"]["macs"]
    assert retrain["training_flops"] == (3 * 2 * slim + 2 * dense_macs) * retrain["samples"]
    assert report["cost"]["total_flops"] == search["training_flops"] + retrain["training_flops"]

    # EB retrains the searched weights: the teacher is the start, saved once
    saved = json.loads((reference / "search_result" / "outcome.json").read_text())
    assert saved["plan"]["has_teacher_state"] and saved["plan"]["has_start_state"]
    tensors = load_file(str(reference / "search_result" / "tensors.safetensors"))
    assert not any(k.startswith("teacher.") for k in tensors)

    # killed when retrain epoch 2's metrics line is written: epoch 1's checkpoint is kept
    real_append = phase_files.append_entry

    def killed(path, entry):
        if entry["phase"] == "retrain" and entry["epoch"] == 2:
            raise KeyboardInterrupt("killed")
        real_append(path, entry)

    killed_dir = tmp_path / "killed"
    monkeypatch.setattr(phase_files, "append_entry", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(recipe, killed_dir, progress=False)
    monkeypatch.setattr(phase_files, "append_entry", real_append)
    assert load_checkpoint(killed_dir / "checkpoints" / "retrain" / "last.pt")["epoch"] == 1

    def no_search(self, run):
        raise AssertionError("the search ran again")

    monkeypatch.setattr(EarlyBirdTrain, "search", no_search)
    resumed = run_pipeline(recipe, killed_dir, resume=True, progress=False)
    _assert_same(distill.teacher.state_dict(), teachers[-1].teacher.state_dict())
    assert resumed["retrain"]["distill"] == summary
    assert resumed["cost"]["phases"] == report["cost"]["phases"]
    assert resumed["accuracy"] == report["accuracy"]
    _assert_same(_weights(killed_dir), _weights(reference))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "overrides", "cls"),
    [
        ("lt", ["prune.method=lt"], LotteryTicket),
        ("eb", [*EARLY, "retrain.mode=reinit"], EarlyBirdTrain),
    ],
)
def test_a_teacher_that_is_not_the_start_is_saved_and_a_resume_past_the_search_uses_it(
    tmp_path, monkeypatch, method, overrides, cls
) -> None:
    recipe = load_recipe("quickstart", [*DISTILL, *overrides])
    reference = tmp_path / "reference"
    teachers = _spy_teachers(monkeypatch)
    first = run_pipeline(recipe, reference, progress=False)
    tensors = load_file(str(reference / "search_result" / "tensors.safetensors"))
    teacher = {k[len("teacher.") :]: v for k, v in tensors.items() if k.startswith("teacher.")}
    _assert_same(teacher, teachers[0].teacher.state_dict())
    searched = load_checkpoint(reference / "checkpoints" / "search" / "last.pt")["model"]
    _assert_same(teacher, searched)  # the trained dense net, not LT's rewound start
    if method == "lt":
        start = {k[len("start.") :]: v for k, v in tensors.items() if k.startswith("start.")}
        assert not torch.equal(start["features.0.weight"], teacher["features.0.weight"])
    else:  # a reinit saves no start
        assert not any(k.startswith("start.") for k in tensors)

    resumed = tmp_path / "resumed"
    _as_if_killed_after_the_search(reference, resumed, method)

    def no_search(self, run):
        raise AssertionError("the search ran again")

    monkeypatch.setattr(cls, "search", no_search)
    second = run_pipeline(recipe, resumed, resume=True, progress=False)
    _assert_same(teachers[-1].teacher.state_dict(), teacher)
    assert second["retrain"]["distill"] == first["retrain"]["distill"]
    eval_macs = count_flops(teachers[-1].teacher, SIZE, training=False).macs
    assert second["retrain"]["distill"]["teacher_macs"] == eval_macs
    assert second["cost"]["phases"] == first["cost"]["phases"]
    assert second["accuracy"] == first["accuracy"]
    _assert_same(_weights(resumed), _weights(reference))


# ----------------------------------------------------------------------------- a file teacher


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    """A VGG-11 twice the quickstart's width for the digits, as safetensors (untrained: what
    is checked is which weights arrive, not what they know)."""
    torch.manual_seed(21)
    path = tmp_path_factory.mktemp("teacher") / "wide.safetensors"
    save_file(build_model("vgg11_cifar", 10, 1, width_mult=0.5).state_dict(), path)
    return path


def _file_recipe(path: Path, *overrides: str):
    return load_recipe(
        "quickstart",
        [
            *TINY,
            "prune.method=snip",  # SNIP trains no dense net: a file is its only teacher
            f"retrain.distill.teacher={path}",
            "retrain.distill.model=vgg11_cifar",
            "retrain.distill.kwargs={width_mult: 0.5}",
            *overrides,
        ],
    )


def test_a_file_teacher_is_loaded_and_its_checksum_recorded(
    teacher_file, tmp_path, monkeypatch
) -> None:
    digest = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    teachers = _spy_teachers(monkeypatch)
    run_dir = tmp_path / "snip"
    report = run_pipeline(_file_recipe(teacher_file), run_dir, progress=False)
    _assert_same(teachers[0].teacher.state_dict(), load_file(str(teacher_file)))
    wide = build_model("vgg11_cifar", 10, 1, width_mult=0.5)
    wide_macs = count_flops(wide, SIZE, training=False).macs
    assert wide_macs > report["model"]["dense"]["macs"]  # its own architecture, not the run's
    summary = report["retrain"]["distill"]
    assert summary["teacher"] == str(teacher_file) and summary["sha256"] == digest
    assert summary["teacher_macs"] == wide_macs
    assert _results(run_dir)["retrain"]["distill"] == summary
    recorded = yaml.safe_load(RunPaths(run_dir).recipe.read_text())["retrain"]["distill"]
    assert recorded["teacher_sha256"] == digest
    (retrain,) = [p for p in report["cost"]["phases"] if p["phase"] == "retrain"]
    assert retrain["teacher_macs_per_sample"] == wide_macs
    # SNIP saves no dense teacher: nothing of the file is copied into the run
    tensors = load_file(str(run_dir / "search_result" / "tensors.safetensors"))
    assert not any(k.startswith("teacher.") for k in tensors)


def test_a_missing_teacher_file_is_one_line_naming_the_field(tmp_path) -> None:
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(UserError, match=r"retrain\.distill\.teacher") as info:
        run_pipeline(_file_recipe(missing), tmp_path / "run", progress=False)
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "model.init" not in message


def test_a_pinned_checksum_the_file_does_not_have_is_refused(teacher_file, tmp_path) -> None:
    pinned = "0123456789abcdef" * 4
    recipe = _file_recipe(teacher_file, f"retrain.distill.teacher_sha256={pinned}")
    expected = rf"^retrain\.distill\.teacher .* not retrain\.distill\.teacher_sha256 {pinned}"
    with pytest.raises(UserError, match=expected):
        run_pipeline(recipe, tmp_path / "run", progress=False)


def test_a_resume_refuses_a_changed_teacher_file_and_a_teacher_added_to_an_older_run(
    teacher_file, tmp_path
) -> None:
    own = tmp_path / "teacher.safetensors"
    shutil.copy(teacher_file, own)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    written = with_init_checksum(_file_recipe(own))  # what run_pipeline writes to recipe.yaml
    RunPaths(run_dir).recipe.write_text(written.to_yaml())
    assert check_resume(run_dir, with_init_checksum(_file_recipe(own))) == []
    moved = tmp_path / "elsewhere" / "teacher.safetensors"
    moved.parent.mkdir()
    shutil.copy(own, moved)  # the same file in another place: accepted, and recorded
    (change,) = check_resume(run_dir, with_init_checksum(_file_recipe(moved)))
    assert (change.field, change.given) == ("retrain.distill.teacher", str(moved))
    RunPaths(run_dir).recipe.write_text(written.to_yaml())
    with pytest.raises(UserError, match=r"retrain\.distill\.teacher: .* -> 'dense'"):
        check_resume(run_dir, load_recipe("quickstart", DISTILL))  # a file is not "dense"
    save_file({"x": torch.zeros(1)}, own)  # the file's content changes
    with pytest.raises(UserError, match=r"retrain\.distill\.teacher_sha256: ") as info:
        check_resume(run_dir, with_init_checksum(_file_recipe(own)))
    assert "\n" not in str(info.value)

    # a run written before retrain.distill existed trained on the labels alone
    older = load_recipe("quickstart", TINY).to_dict()
    del older["retrain"]["distill"]
    RunPaths(run_dir).recipe.write_text(yaml.safe_dump(older))
    assert check_resume(run_dir, load_recipe("quickstart", TINY)) == []
    with pytest.raises(UserError, match=r"retrain\.distill: None -> "):
        check_resume(run_dir, load_recipe("quickstart", DISTILL))


def test_a_teacher_file_of_another_architecture_is_one_line_naming_the_field(
    teacher_file, tmp_path
) -> None:
    recipe = load_recipe(  # the wide file, read as the recipe's own narrow VGG
        "quickstart", [*TINY, "prune.method=snip", f"retrain.distill.teacher={teacher_file}"]
    )
    with pytest.raises(UserError, match=r"^retrain\.distill\.teacher .* does not fit") as info:
        run_pipeline(recipe, tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)


def test_a_teacher_file_without_a_head_for_these_classes_is_refused_before_the_search(
    tmp_path, monkeypatch
) -> None:
    torch.manual_seed(5)
    path = tmp_path / "cifar100.safetensors"  # trained for 100 classes, not the digits' 10
    save_file(build_model("vgg11_cifar", 100, 1, width_mult=0.25).state_dict(), path)
    recipe = load_recipe("quickstart", [*DISTILL, f"retrain.distill.teacher={path}"])

    def no_search(self, run):
        raise AssertionError("the search ran before the teacher was checked")

    monkeypatch.setattr(EarlyBirdTrain, "search", no_search)
    with pytest.raises(UserError, match=r"has no classifier for 10 classes") as info:
        run_pipeline(recipe, tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_thinets_dense_teacher_is_the_trained_net_not_its_rescaled_one(
    tmp_path, monkeypatch
) -> None:
    teachers = _spy_teachers(monkeypatch)
    recipe = load_recipe("quickstart", [*DISTILL, "prune.method=thinet", "prune.ratio=0.5"])
    run_pipeline(recipe, tmp_path / "run", progress=False)
    searched = load_checkpoint(tmp_path / "run" / "checkpoints" / "search" / "last.pt")
    _assert_same(teachers[0].teacher.state_dict(), searched["model"])
    start = load_file(str(tmp_path / "run" / "search_result" / "tensors.safetensors"))
    assert any(k.startswith("teacher.") for k in start)  # not the rescaled start: kept apart

"""Bad input never produces a traceback: exit status 2 and exactly one line on stderr.

Named cases cover each kind of mistake the issue lists; hypothesis then fuzzes recipe files
(random mappings over the schema's keys with values of any type, random text and bytes) and
``prune`` argument lists. ``ebcompress.cli.main`` runs in-process.

No fuzzed example may start training: every fuzzed run points ``--out`` (last, so it wins)
at a folder whose lock names a live process that is not this one, so a recipe that happens
to be valid is refused right after validation. The test checks that folder stays untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from timm.models import register_model
from torch import nn

from ebcompress.cli import main
from ebcompress.recipe import Recipe
from ebcompress.run.lock import run_lock

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def run_cli(argv: list[str]) -> tuple[int | str | None, list[str]]:
    """Exit status and stderr lines of ``ebcompress ARGV`` (stdout is discarded)."""
    err = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue().splitlines()


def assert_one_line_error(argv: list[str], match: str | None = None) -> str:
    code, lines = run_cli(argv)
    assert code == 2, (argv, code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
    assert "Traceback" not in lines[0]
    if match is not None:
        assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def guarded_out(tmp_path_factory) -> Path:
    """A run folder locked by a live process other than this one: every run is refused."""
    folder = tmp_path_factory.mktemp("guard") / "run"
    folder.mkdir()
    (folder / "run.lock").write_text(f"{os.getppid()}\n")
    yield folder
    assert sorted(p.name for p in folder.iterdir()) == ["run.lock"], "a fuzzed run wrote files"


# ----------------------------------------------------------------------------- named cases


class _HeadOnly(nn.Module):
    """Its one convolution produces the logits, so no channel can be removed."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.head = nn.Conv2d(in_chans, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).mean(dim=(2, 3))


@register_model
def ebtest_head_only(pretrained: bool = False, **kwargs) -> nn.Module:
    # timm also passes its pretrained_cfg and friends; only these two matter here.
    return _HeadOnly(kwargs.get("num_classes", 10), kwargs.get("in_chans", 3))


def _prune(recipe: str, out: Path, *extra: str) -> list[str]:
    return ["prune", "--recipe", recipe, "--out", str(out), "--device", "cpu", *extra]


RECIPE_FILES = {
    "malformed YAML": ("model: [unclosed\n", "malformed YAML at line"),
    "not a mapping": ("- a\n- b\n", "must be a YAML mapping"),
    "unknown key": ("base: quickstart\ntrian: {epochs: 3}\n", "unknown key 'trian'"),
    "unknown nested key": ("base: quickstart\ntrain: {epoch: 3}\n", "unknown key 'train.epoch'"),
    "wrong type": ("base: quickstart\ntrain: {epochs: many}\n", "train.epochs"),
    "ratio 0": ("base: quickstart\nprune: {ratio: 0}\n", "prune.ratio"),
    "ratio 1": ("base: quickstart\nprune: {ratio: 1.0}\n", "prune.ratio"),
    "watch ratio above 1": ("base: quickstart\nprune: {watch_ratios: [1.5]}\n", "(0, 1)"),
    "nan lr": ("base: quickstart\ntrain: {lr: .nan}\n", "train.lr"),
    "negative seed": ("base: quickstart\nseed: -1\n", "seed"),
    "recursive alias": ("base: quickstart\nmodel: {kwargs: &a {x: *a}}\n", "recursive"),
    "too deep": ("seed: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    "num_classes in kwargs": ("base: quickstart\nmodel: {kwargs: {num_classes: 3}}\n", "data set"),
}


@pytest.mark.parametrize("text, match", RECIPE_FILES.values(), ids=RECIPE_FILES.keys())
def test_a_bad_recipe_file_is_one_line(tmp_path, text: str, match: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text, encoding="utf-8")
    assert_one_line_error(_prune(str(recipe), tmp_path / "run"), match)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"\xff\xfe\x00 not text")
    assert_one_line_error(_prune(str(recipe), tmp_path / "run"), "not UTF-8")


BAD_ARGUMENTS = {
    "unknown recipe": (["--set", "seed=1"], "no_such_recipe", "unknown recipe"),
    "--set without =": (["--set", "train.lr"], "quickstart", "expected KEY=VALUE"),
    "--set ratio 1.5": (["--set", "prune.ratio=1.5"], "quickstart", "prune.ratio"),
    "--set ratio -0.1": (["--set", "prune.ratio=-0.1"], "quickstart", "prune.ratio"),
    "--set unknown key": (["--set", "prune.ration=0.5"], "quickstart", "unknown key"),
    "--method unknown": (["--method", "magic"], "quickstart", "prune.method"),
    "--device unknown": (["--device", "banana"], "quickstart", "--device 'banana'"),
    "--device meta": (["--device", "meta"], "quickstart", "cpu or cuda"),
    "--device cuda:99": (["--device", "cuda:99"], "quickstart", "--device 'cuda:99'"),
    "unknown option": (["--epochs", "3"], "quickstart", "No such option"),
}


@pytest.mark.parametrize("extra, recipe, match", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_prune_arguments_are_one_line(tmp_path, extra, recipe, match) -> None:
    assert_one_line_error([*_prune(recipe, tmp_path / "run"), *extra], match)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        ([], "no command given"),
        (["train"], "No such command"),
        (["prune"], "Missing option '--recipe'"),
        (["report", "/nonexistent/run"], "does not exist"),
        (["compare", "--recipe", "quickstart", "--ratios", "0.3,1.5"], "outside (0, 1)"),
    ],
)
def test_other_usage_errors_are_one_line(argv, match) -> None:
    assert_one_line_error(argv, match)


def test_an_out_that_is_a_file_is_one_line(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(_prune("quickstart", tmp_path / "notes.txt"), "is a file")
    assert_one_line_error(_prune("quickstart", tmp_path / "notes.txt" / "run"), "cannot create")


def test_a_model_without_prunable_channels_is_one_line(tmp_path) -> None:
    sets = ["--set", "model.name=ebtest_head_only", "--set", "model.kwargs={}"]
    assert_one_line_error([*_prune("quickstart", tmp_path / "run"), *sets], "no prunable channel")


def test_a_model_too_deep_for_the_image_size_is_one_line(tmp_path) -> None:
    sets = ["--set", "model.name=vgg16_cifar", "--set", "data.image_size=8"]
    assert_one_line_error([*_prune("quickstart", tmp_path / "run"), *sets], "data.image_size")


@pytest.mark.parametrize(
    "data, files, match",
    [
        ("fashion_mnist", {}, "no train-images-idx3-ubyte"),
        ("fashion_mnist", {"train-images-idx3-ubyte": b"\0" * 64}, "magic number"),
        ("cifar10", {"cifar-10-batches-bin/data_batch_1.bin": b"x" * 100}, "3073-byte records"),
        ("imagefolder", {"readme.txt": b"hi"}, "no folder"),
    ],
    ids=["fashion-mnist missing", "fashion-mnist wrong", "cifar10 truncated", "no train/val"],
)
def test_a_data_folder_with_the_wrong_files_is_one_line(tmp_path, data, files, match) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    argv = [*_prune("quickstart", tmp_path / "run"), "--set", f"data.name={data}"]
    assert_one_line_error([*argv, "--data", str(root)], match)


def test_a_data_folder_that_does_not_exist_is_one_line(tmp_path) -> None:
    argv = [*_prune("quickstart", tmp_path / "run"), "--set", "data.name=cifar10"]
    assert_one_line_error([*argv, "--data", str(tmp_path / "missing")], "no data_batch_1.bin")


def _fake_run(run_dir: Path, status: str) -> Path:
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("name: quickstart\n")
    (run_dir / "state.json").write_text(json.dumps({"status": status}))
    return run_dir


def test_a_finished_run_is_refused_without_overwrite(tmp_path) -> None:
    run_dir = _fake_run(tmp_path / "run", "finished")
    assert_one_line_error(_prune("quickstart", run_dir), "already holds a finished run")


def test_an_unfinished_run_is_refused_without_resume(tmp_path) -> None:
    run_dir = _fake_run(tmp_path / "run", "search")
    assert_one_line_error(_prune("quickstart", run_dir), "continue it with --resume")


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_a_live_lock_refuses_a_second_run_whatever_its_flags(tmp_path, flag) -> None:
    run_dir = _fake_run(tmp_path / "run", "search")
    with run_lock(run_dir):  # held by this process through another open file
        line = assert_one_line_error([*_prune("quickstart", run_dir), *flag], "another ebcompress")
        assert f"pid {os.getpid()} on " in line
        assert (run_dir / "state.json").is_file()  # --overwrite did not delete the live run


def test_a_stale_lock_alone_is_a_run_killed_at_its_start(tmp_path) -> None:
    """A run killed before it wrote recipe.yaml leaves only run.lock; it is not a foreign
    folder: without --resume the user hears how to continue."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.lock").write_text("999999999\n")  # no such process
    assert_one_line_error(_prune("quickstart", run_dir), "continue it with --resume")


# ----------------------------------------------------------------------------- fuzzing


def _schema_paths(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _schema_paths(annotation, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


SCHEMA_PATHS = _schema_paths()
SECTIONS = sorted({path.split(".")[0] for path in SCHEMA_PATHS if "." in path})
# argv strings cannot hold NUL; every other character may come from a user.
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
KEYS = st.one_of(st.sampled_from(SCHEMA_PATHS), st.sampled_from(SECTIONS), TEXT)


def _nest(flat: dict[str, object]) -> dict[str, object]:
    """``{"train.lr": 1}`` -> ``{"train": {"lr": 1}}``; a later path wins a conflict."""
    out: dict[str, object] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return out


RECIPES = st.builds(
    lambda flat, base: {**({"base": "quickstart"} if base else {}), **_nest(flat)},
    st.dictionaries(KEYS, VALUES, min_size=1, max_size=6),
    st.booleans(),
)


@FUZZ
@given(recipe=RECIPES)
def test_fuzzed_recipe_mappings_fail_with_one_line(tmp_path, guarded_out, recipe) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert_one_line_error(["prune", "--recipe", str(path), "--out", str(guarded_out)])


@FUZZ
@given(content=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_fuzzed_recipe_text_fails_with_one_line(tmp_path, guarded_out, content) -> None:
    path = tmp_path / "fuzzed.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    assert_one_line_error(["prune", "--recipe", str(path), "--out", str(guarded_out)])


SET_PAIRS = st.builds(lambda key, value: f"{key}={value}", KEYS, TEXT | VALUES.map(json.dumps))
TOKENS = st.one_of(
    st.sampled_from(
        ["--recipe", "-r", "--method", "--data", "--out", "--set", "--resume", "--overwrite"]
        + ["--device", "--bogus", "-z", "--", "quickstart", "eb", "xyz", "cpu", "cuda", "cuda:3"]
    ),
    SET_PAIRS,
    TEXT.filter(lambda token: token != "--help"),
)


@FUZZ
@given(tokens=st.lists(TOKENS, max_size=8))
def test_fuzzed_prune_arguments_fail_with_one_line(guarded_out, tokens) -> None:
    assert_one_line_error(["prune", *tokens, "--out", str(guarded_out)])

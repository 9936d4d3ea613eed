"""Runs that start from trained weights (model.init): what loads, what is trained and charged,
what the report says, and a resume whose file changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ebcompress.baselines.lottery_ticket import LotteryTicket
from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.ticket import Ticket
from ebcompress.data import load_data
from ebcompress.errors import UserError
from ebcompress.methods.data import data_options
from ebcompress.methods.training import build_trainer
from ebcompress.models import build_model
from ebcompress.recipe import load_recipe
from ebcompress.run.drift import check_resume
from ebcompress.run.init_weights import with_init_checksum
from ebcompress.run.paths import RunPaths
from ebcompress.run.pipeline import run_pipeline, start_run
from ebcompress.run.state import read_state

TINY = [
    "train.epochs=2",
    "train.milestones=[1]",
    "train.batch_size=64",
    "data.train_subset=320",
    "data.test_subset=120",
    "prune.watch_ratios=[]",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The quickstart's VGG-11 after 3 dense epochs on the digits, as safetensors."""
    recipe = load_recipe("quickstart", [*TINY, "train.epochs=3"])
    data = load_data(data_options(recipe.data), seed=recipe.seed)
    torch.manual_seed(11)
    model = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
    history = build_trainer(model, data, recipe, "search", device="cpu", progress=False).fit()
    assert history[-1].train_top1 > 0.5  # it learned: a pretrained start, not a random one
    path = tmp_path_factory.mktemp("weights") / "vgg.safetensors"
    save_file(model.state_dict(), path)
    return path


def _recipe(path: Path, *overrides: str):
    return load_recipe("quickstart", [*TINY, f"model.init={path}", *overrides])


def test_the_dense_start_is_the_file_and_reinit_is_not(trained, tmp_path) -> None:
    from safetensors.torch import load_file

    expected = load_file(trained)
    run, _ = start_run(
        _recipe(trained), tmp_path, data_root=None, resume=False, device=torch.device("cpu"),
        progress=False,
    )  # fmt: skip
    for key, value in expected.items():
        assert torch.equal(run.model.state_dict()[key], value), key
        assert torch.equal(run.initial_state[key], value), key  # what LT rewinds to
    fresh = run.build_dense().state_dict()  # retrain.mode: reinit
    assert not torch.equal(fresh["features.0.weight"], expected["features.0.weight"])


def test_ns_from_the_file_with_no_dense_epoch_prunes_it_and_retrains(trained, tmp_path) -> None:
    recipe = _recipe(trained, "prune.method=ns", "prune.dense_epochs=0")
    report = run_pipeline(recipe, tmp_path / "ns", progress=False)
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    assert set(phases) == {"retrain"} and phases["retrain"]["epochs"] == 2  # nothing dense
    assert report["search"]["epochs"] == 0 and report["ticket"]["epoch"] == 0
    # the ticket is the one the loaded BN scales draw, untouched by any training
    model = build_model(recipe.model.name, 10, 1, init=trained, **recipe.model.kwargs)
    ticket = Ticket.load(RunPaths(tmp_path / "ns").ticket)
    drawn = ChannelGraph(model, torch.randn(1, 1, 16, 16)).draw(0.3, recipe.prune.draw_options())
    assert ticket.kept == drawn.kept
    digest = hashlib.sha256(trained.read_bytes()).hexdigest()
    assert report["init"] == {"file": str(trained), "sha256": digest, "new_head": []}
    assert read_state(tmp_path / "ns").results.init.sha256 == digest
    markdown = RunPaths(tmp_path / "ns").report_md.read_text()
    assert f"`{trained}` (sha256 `{digest}`)" in markdown and "no dense epoch" in markdown
    assert "init_sha256: " + digest in RunPaths(tmp_path / "ns").recipe.read_text()


def test_eb_from_the_file_still_searches(trained, tmp_path) -> None:
    recipe = _recipe(trained, "prune.window=2", "train.epochs=3", "retrain.epochs=1")
    report = run_pipeline(recipe, tmp_path / "eb", progress=False)
    search = report["search"]
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    assert search["epochs"] >= 2 and phases["search"]["epochs"] == search["epochs"]
    assert search["learned_epoch"] == 1  # a trained start has learned from the first epoch
    assert len(search["window_max_distances"]["0.3"]) == search["epochs"]
    assert report["init"]["file"] == str(trained)


def test_lt_from_the_file_rewinds_to_it(trained, tmp_path) -> None:
    from safetensors.torch import load_file

    recipe = _recipe(trained, "prune.method=lt", "prune.dense_epochs=1")
    run, _ = start_run(
        recipe, tmp_path, data_root=None, resume=False, device=torch.device("cpu"), progress=False
    )
    run.run_dir = None
    outcome = LotteryTicket().search(run)
    assert outcome.search_epochs == 1 and run.ledger.phases["search"].epochs == 1
    for key, value in load_file(trained).items():
        assert torch.equal(outcome.start_state[key], value), key
    late = _recipe(trained, "prune.method=lt", "prune.dense_epochs=1", "prune.lt.rewind_epoch=1")
    run.recipe = late
    with pytest.raises(UserError, match="rewinds into the full dense schedule"):
        LotteryTicket().search(run)


def test_a_resume_whose_file_changed_is_refused(trained, tmp_path) -> None:
    own = tmp_path / "w.safetensors"
    shutil.copy(trained, own)
    recipe = with_init_checksum(_recipe(own))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunPaths(run_dir).recipe.write_text(recipe.to_yaml())  # a run killed in its search
    moved = tmp_path / "moved.safetensors"
    shutil.copy(own, moved)
    changes = check_resume(run_dir, with_init_checksum(_recipe(moved)))
    assert [c.field for c in changes] == ["model.init"]  # moved, same content: accepted
    save_file({"x": torch.zeros(1)}, own)  # the file's content changes
    with pytest.raises(UserError) as err:
        run_pipeline(_recipe(own), run_dir, resume=True, progress=False)
    assert "model.init_sha256: " in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="has sha256 .*, not model.init_sha256"):
        with_init_checksum(recipe)  # a pinned checksum must match the file


def test_thinet_from_the_file_with_no_dense_epoch_trains_nothing(trained, tmp_path) -> None:
    from ebcompress.baselines.thinet import ThiNet

    recipe = _recipe(
        trained, "prune.method=thinet", "prune.dense_epochs=0", "prune.thinet.samples=8"
    )
    run, _ = start_run(
        recipe, tmp_path, data_root=None, resume=False, device=torch.device("cpu"), progress=False
    )
    run.run_dir = None
    outcome = ThiNet().search(run)
    assert outcome.search_epochs == 0 and outcome.ticket.epoch == 0
    assert "search" not in run.ledger.phases


def test_a_recipe_written_without_the_checksum_takes_the_given_one(trained, tmp_path) -> None:
    # compare serves an EB run from its shared search's recipe, before any checksum was filled
    run_dir = tmp_path / "served"
    run_dir.mkdir()
    RunPaths(run_dir).recipe.write_text(_recipe(trained).to_yaml())
    assert check_resume(run_dir, with_init_checksum(_recipe(trained))) == []
    RunPaths(run_dir).recipe.write_text(load_recipe("quickstart", TINY).to_yaml())
    with pytest.raises(UserError, match="model.init: None -> "):
        check_resume(run_dir, with_init_checksum(_recipe(trained)))  # random start -> a file


@pytest.mark.slow
def test_a_compare_from_the_file_records_its_checksum_and_drops_dense_epochs_for_eb(
    trained, tmp_path
) -> None:
    import yaml

    from ebcompress.run.compare import run_compare

    recipe = _recipe(trained, "prune.method=ns", "prune.dense_epochs=0", "retrain.epochs=1")
    result = run_compare(recipe, tmp_path, methods=["eb", "ns"], ratios=[0.3, 0.5], progress=False)
    assert [r["method"] for r in result["rows"]] == ["eb", "eb", "ns", "ns"]
    digest = hashlib.sha256(trained.read_bytes()).hexdigest()
    for folder in ("eb_p30_p50", "ns"):
        claimed = yaml.safe_load((tmp_path / "shared" / folder / "recipe.yaml").read_text())
        assert claimed["model"]["init_sha256"] == digest, folder
    eb = yaml.safe_load((tmp_path / "eb_p30" / "recipe.yaml").read_text())
    assert eb["prune"].get("dense_epochs") is None

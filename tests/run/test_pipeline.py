"""The EB pipeline end to end on the embedded digits data, plus its run-directory rules."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ebcompress.channels.slim import masked_equivalent, slim
from ebcompress.channels.ticket import Ticket
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.run.lock import lock_holder, run_lock
from ebcompress.run.paths import RunPaths
from ebcompress.run.pipeline import run_pipeline
from ebcompress.run.results import RunResults

# A shortened quickstart: 12 epochs, a 3-mask window so a ticket can emerge early.
FAST = [
    "train.epochs=12",
    "train.milestones=[6,9]",
    "train.batch_size=64",
    "data.train_subset=640",
    "prune.window=3",
    "prune.watch_ratios=[0.5]",
    "export.formats=[bundle,onnx]",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "quick"
    report = run_pipeline(load_recipe("quickstart", FAST), run_dir, progress=False)
    return run_dir, report


@pytest.mark.slow
def test_quickstart_draws_a_ticket_early_and_the_flops_add_up(finished_run) -> None:
    run_dir, report = finished_run
    ticket = Ticket.load(run_dir / "ticket.json")
    assert report["ticket"]["emerged"] is True
    assert ticket.epoch is not None and ticket.epoch < 12
    assert report["search"]["epochs"] == ticket.epoch
    phases = {p["phase"]: p for p in report["cost"]["phases"]}
    assert set(phases) == {"search", "retrain"}
    # search trains the dense net up to the EB epoch; the slim net retrains on a restarted
    # full schedule (retrain.schedule: restart, the paper's protocol)
    assert phases["search"]["epochs"] == ticket.epoch
    assert phases["retrain"]["epochs"] == 12
    assert report["retrain"]["schedule"] == "restart" and report["retrain"]["start_epoch"] == 0
    assert phases["search"]["macs_per_sample"] == report["model"]["dense"]["macs"]
    assert phases["retrain"]["macs_per_sample"] == report["model"]["slim"]["macs"]
    for p in phases.values():
        assert p["training_flops"] == 3 * 2 * p["macs_per_sample"] * p["samples"]
        assert p["samples"] == 640 * p["epochs"]
    assert report["cost"]["total_flops"] == sum(p["training_flops"] for p in phases.values())
    dense = report["cost"]["dense_reference_flops"]
    assert dense == 3 * 2 * report["model"]["dense"]["macs"] * 640 * 12
    assert report["cost"]["total_flops"] < dense
    assert report["model"]["slim"]["macs"] < report["model"]["dense"]["macs"]
    assert 0.25 < report["accuracy"]["test_top1"] <= 1.0


@pytest.mark.slow
def test_run_directory_holds_every_artifact(finished_run) -> None:
    """Every file where RunPaths names it (the engine places its own, from the run_dir)."""
    run_dir, _ = finished_run
    paths = RunPaths(run_dir)
    for path in (paths.recipe, paths.state, paths.metrics, paths.ticket, paths.report_json):
        assert path.is_file(), path
    assert paths.report_md.is_file() and paths.plot("cost").is_file()
    assert (paths.model / "model.safetensors").is_file()
    assert (paths.model / "model.onnx").is_file()
    assert (paths.masks / "history.json").is_file()
    assert paths.search_outcome.is_file() and paths.search_tensors.is_file()
    for phase in ("search", "retrain"):
        assert paths.checkpoint(phase).is_file(), phase
    phases = [json.loads(line)["phase"] for line in paths.metrics.open()]
    assert phases == sorted(phases, key=["search", "retrain"].index)
    assert not paths.lock.exists()
    stored = json.loads(paths.state.read_text())["results"]
    assert RunResults.from_dict(stored).to_dict() == stored  # the typed results lose nothing
    hidden = list(run_dir.rglob(".*"))
    assert hidden == [], hidden  # no temporary file of an atomic write is left behind


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_by_accident(finished_run) -> None:
    run_dir, _ = finished_run
    with pytest.raises(UserError, match="already holds a finished run; use --overwrite"):
        run_pipeline(load_recipe("quickstart", FAST), run_dir, progress=False)


def test_an_unfinished_run_needs_resume_or_overwrite(tmp_path) -> None:
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    (tmp_path / "state.json").write_text('{"status": "search"}')
    with pytest.raises(UserError, match="unfinished run; continue it with --resume"):
        run_pipeline(load_recipe("quickstart"), tmp_path, progress=False)


def test_a_foreign_folder_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no ebcompress run"):
        run_pipeline(load_recipe("quickstart"), tmp_path, progress=False)


def test_a_held_lock_refuses_a_second_writer_naming_the_holder(tmp_path) -> None:
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    (tmp_path / "state.json").write_text('{"status": "search"}')
    with run_lock(tmp_path):  # flock is per open file: a second open in this process conflicts
        with pytest.raises(UserError, match=rf"another ebcompress process \(pid {os.getpid()} on "):
            run_pipeline(load_recipe("quickstart"), tmp_path, resume=True, progress=False)
        assert lock_holder(tmp_path).startswith(f"pid {os.getpid()}")
    assert lock_holder(tmp_path) is None and not (tmp_path / "run.lock").exists()


def test_a_lock_file_nobody_holds_does_not_block_even_with_a_live_pid(tmp_path) -> None:
    # a killed run leaves its file behind; after a restart its pid may belong to anyone
    (tmp_path / "run.lock").write_text(f"{os.getppid()} somehost\n")
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


def test_a_killed_holder_releases_the_lock(tmp_path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from ebcompress.run.lock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path) == f"pid {holder.pid} on {socket.gethostname()}"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
    assert (tmp_path / "run.lock").exists()  # SIGKILL left the file, but not the lock
    assert lock_holder(tmp_path) is None
    with run_lock(tmp_path):
        pass


def _search_only(tmp_path, mode: str):
    """Run the EB search on a tiny net; return the method, context and outcome."""
    from ebcompress.cost.flops import TrainingLedger
    from ebcompress.data import load_data
    from ebcompress.methods.base import RunContext
    from ebcompress.methods.data import data_options
    from ebcompress.methods.eb_train import EarlyBirdTrain
    from ebcompress.models import build_model

    recipe = load_recipe(
        "quickstart",
        [
            *FAST,
            "train.epochs=4",
            "train.milestones=[2]",
            "prune.max_search_epochs=3",
            f"retrain.mode={mode}",
        ],
    )
    data = load_data(data_options(recipe.data))
    torch.manual_seed(0)
    model = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
    run = RunContext(
        recipe=recipe,
        data=data,
        model=model,
        example_inputs=torch.randn(1, 1, 16, 16),
        run_dir=None,
        ledger=TrainingLedger(),
        device=torch.device("cpu"),
        dense_macs=1,
        progress=False,
        build_dense=lambda: build_model(recipe.model.name, 10, 1, **recipe.model.kwargs),
    )
    method = EarlyBirdTrain()
    return method, run, method.search(run)


def test_finetune_inherits_the_ticket_weights(tmp_path) -> None:
    from ebcompress.run.pipeline import _slim_for_retrain

    method, run, outcome = _search_only(tmp_path, "finetune")
    assert outcome.emerged is False and "no ticket emerged within 3 epochs" in outcome.note
    plan = method.retrain_plan(run, outcome)
    assert (plan.start_epoch, plan.end_epoch, plan.reinit) == (0, 4, False)  # restart
    continued = run.recipe.model_copy(
        update={"retrain": run.recipe.retrain.model_copy(update={"schedule": "continue"})}
    )
    run.recipe = continued
    plan = method.retrain_plan(run, outcome)
    assert (plan.start_epoch, plan.end_epoch, plan.reinit) == (3, 4, False)
    x = torch.randn(8, 1, 16, 16)
    masked = masked_equivalent(run.model, outcome.ticket, run.example_inputs).eval()
    start = _slim_for_retrain(run, outcome, plan).eval()
    with torch.no_grad():
        np.testing.assert_allclose(start(x).numpy(), masked(x).numpy(), atol=1e-5)


def test_reinit_does_not_inherit_them(tmp_path) -> None:
    from ebcompress.run.pipeline import _slim_for_retrain

    method, run, outcome = _search_only(tmp_path, "reinit")
    plan = method.retrain_plan(run, outcome)
    assert (plan.start_epoch, plan.end_epoch, plan.reinit) == (0, 4, True)
    start = _slim_for_retrain(run, outcome, plan).eval()
    inherited = slim(run.model, outcome.ticket, run.example_inputs).eval()
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        assert (start(x) - inherited(x)).abs().max() > 1e-3
    pairs = zip(start.state_dict().items(), inherited.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        if a.is_floating_point() and a.numel() > 1 and "running" not in name:
            assert not torch.equal(a, b), name

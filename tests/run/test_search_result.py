"""A resume past the search reads the saved ticket and retrain start; it never searches again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ebcompress.baselines.lottery_ticket import LotteryTicket
from ebcompress.baselines.snip import Snip
from ebcompress.recipe import load_recipe
from ebcompress.run.pipeline import run_pipeline

TINY = [
    "prune.snip.granularity=unstructured",
    "prune.lt.granularity=unstructured",
    "train.epochs=3",
    "train.milestones=[2]",
    "train.batch_size=64",
    "data.train_subset=256",
    "data.test_subset=100",
    "prune.learning_margin=0.05",
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "cls"), [("snip", Snip), ("lt", LotteryTicket)])
def test_a_resume_after_the_search_reuses_it_and_ends_identical(
    tmp_path, monkeypatch, method, cls
) -> None:
    recipe = load_recipe("quickstart", [*TINY, f"prune.method={method}"])
    reference = tmp_path / "reference"
    first = run_pipeline(recipe, reference, progress=False)
    saved = json.loads((reference / "search_result" / "outcome.json").read_text())
    assert saved["plan"]["has_start_state"]
    assert len(saved["ledger"]["phases"]) == (0 if method == "snip" else 1)  # SNIP trains none
    tensors = load_file(str(reference / "search_result" / "tensors.safetensors"))
    assert any(k.startswith("mask.") for k in tensors) and any(
        k.startswith("start.") for k in tensors
    )

    # The same run, as if killed after the search: no retrain checkpoint, no results.
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "retrain")
    shutil.rmtree(resumed / "model")
    for name in ("report.json", "report.md"):
        (resumed / name).unlink()
    (resumed / "state.json").write_text(json.dumps({"status": "retrain", "method": method}))
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    (resumed / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["phase"] == "search")
    )

    def no_search(self, run):
        raise AssertionError("the search ran again")

    monkeypatch.setattr(cls, "search", no_search)
    second = run_pipeline(recipe, resumed, resume=True, progress=False)
    assert second["accuracy"] == first["accuracy"]
    assert second["cost"]["phases"] == first["cost"]["phases"]
    a = load_file(str(reference / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

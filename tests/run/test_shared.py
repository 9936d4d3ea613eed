"""Shared phases in compare: the same tickets, weights and per-ratio ledgers as separate runs,
each shared phase trained once, resumable wherever it stops."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import ebcompress.run.shared as shared_module
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.engine.metrics_file import read_entries
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.run.compare import run_compare
from ebcompress.run.shared import shared_cost

TINY = [
    "train.epochs=6",
    "train.milestones=[4]",
    "train.batch_size=64",
    "data.train_subset=256",
    "data.test_subset=96",
    "prune.window=2",
    "retrain.epochs=1",
    "prune.max_search_epochs=5",
    "prune.learning_margin=0.05",
    "prune.thinet.samples=16",
    "prune.epsilon=0.1",  # p=0.3 emerges at epoch 3, p=0.7 at 4
]
RATIOS = [0.3, 0.7]


def _same_runs(left, right, run_dirs) -> None:
    """Byte-for-byte the same ticket, slim weights, masks and per-ratio ledger."""
    for name in run_dirs:
        a, b = left / name, right / name
        assert json.loads((a / "ticket.json").read_text()) == json.loads(
            (b / "ticket.json").read_text()
        ), name
        wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
        la, lb = (json.loads((d / "state.json").read_text())["results"]["cost"] for d in (a, b))
        flops = [[p["training_flops"] for p in cost["phases"]] for cost in (la, lb)]
        assert flops[0] == flops[1], name
        if (b / "masks").is_dir():
            ma, mb = MaskHistory.load(a / "masks"), MaskHistory.load(b / "masks")
            assert ma.ratios == mb.ratios, name
            for ratio in mb.ratios:
                assert ma.epochs(ratio) == mb.epochs(ratio), name
                assert all((ma.mask(ratio, e) == mb.mask(ratio, e)).all() for e in mb.epochs(ratio))


@pytest.mark.slow
def test_a_shared_compare_ends_exactly_where_separate_runs_do(tmp_path) -> None:
    recipe = load_recipe("quickstart", TINY)
    methods = ["eb", "ns", "lt", "snip", "thinet"]
    shared = run_compare(
        recipe, tmp_path / "shared", methods=methods, ratios=RATIOS, progress=False
    )
    alone = run_compare(
        recipe, tmp_path / "alone", methods=methods, ratios=RATIOS, progress=False, shared=False
    )
    names = [r["run_dir"] for r in alone["rows"]]
    _same_runs(tmp_path / "shared", tmp_path / "alone", names)
    epochs = {r["ratio"]: r["ticket_epoch"] for r in shared["rows"] if r["method"] == "eb"}
    assert epochs[0.3] < epochs[0.7]  # the shared search outlived the first ticket
    for a, b in zip(shared["rows"], alone["rows"], strict=True):
        assert (a["test_top1"], a["total_flops"]) == (b["test_top1"], b["total_flops"])
        assert b["shared_search"] is None
    by_method = {r["method"]: r["shared_search"] for r in shared["rows"]}
    assert by_method == {
        "eb": "eb_p30_p70",
        "ns": "ns",
        "lt": "lt",
        "snip": None,
        "thinet": "thinet",
    }
    # Each shared search was trained once: its cost is counted once in the compare's total.
    for method, cost in shared["cost"].items():
        rows = [r for r in shared["rows"] if r["method"] == method]
        searches = [r["search_flops"] for r in rows]
        assert cost["per_ratio_flops"] == sum(r["total_flops"] for r in rows)
        assert cost["shared_flops"] == cost["per_ratio_flops"] - sum(searches) + (
            max(searches) if by_method[method] else sum(searches)
        )
        assert alone["cost"][method]["shared_flops"] == cost["per_ratio_flops"]
    shared_dense = tmp_path / "shared" / "shared" / "ns" / "metrics.jsonl"
    assert [e["epoch"] for e in read_entries(shared_dense)] == list(range(1, 7))
    # every run's own metrics hold its search epochs, up to its ticket
    eb_lines = read_entries(tmp_path / "shared" / "eb_p30" / "metrics.jsonl")
    assert [e["epoch"] for e in eb_lines if e["phase"] == "search"] == [1, 2, 3]
    assert "trained once" in (tmp_path / "shared" / "compare.md").read_text()


@pytest.mark.slow
def test_a_shared_search_killed_after_one_ratio_resumes_to_the_same_runs(
    tmp_path, monkeypatch
) -> None:
    recipe = load_recipe("quickstart", TINY)
    saved = shared_module.save_search_result

    def killed_at_the_second(run_dir, *args, **kwargs):
        if run_dir.name == "eb_p70":
            raise KeyboardInterrupt("killed")
        return saved(run_dir, *args, **kwargs)

    monkeypatch.setattr(shared_module, "save_search_result", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_compare(recipe, tmp_path / "shared", methods=["eb"], ratios=RATIOS, progress=False)
    assert (tmp_path / "shared" / "eb_p30" / "search_result" / "outcome.json").is_file()
    assert not (tmp_path / "shared" / "eb_p70" / "search_result").exists()
    monkeypatch.setattr(shared_module, "save_search_result", saved)
    run_compare(recipe, tmp_path / "shared", methods=["eb"], ratios=RATIOS, progress=False)
    run_compare(
        recipe, tmp_path / "alone", methods=["eb"], ratios=RATIOS, progress=False, shared=False
    )
    _same_runs(tmp_path / "shared", tmp_path / "alone", ["eb_p30", "eb_p70"])


@pytest.mark.slow
def test_a_ratio_that_never_emerges_gets_the_newest_mask_as_alone(tmp_path) -> None:
    recipe = load_recipe("quickstart", [*TINY, "prune.epsilon=0.01", "prune.max_search_epochs=3"])
    a = run_compare(recipe, tmp_path / "shared", methods=["eb"], ratios=RATIOS, progress=False)
    run_compare(
        recipe, tmp_path / "alone", methods=["eb"], ratios=RATIOS, progress=False, shared=False
    )
    assert [(r["emerged"], r["ticket_epoch"]) for r in a["rows"]] == [(False, 3), (False, 3)]
    _same_runs(tmp_path / "shared", tmp_path / "alone", ["eb_p30", "eb_p70"])


@pytest.mark.slow
def test_a_shared_dense_phase_of_another_recipe_is_refused(tmp_path) -> None:
    recipe = load_recipe("quickstart", TINY)
    run_compare(recipe, tmp_path, methods=["ns"], ratios=[0.3], progress=False)
    changed = load_recipe("quickstart", [*TINY, "prune.sparsity=0.001"])
    with pytest.raises(UserError, match=r"shared.ns.* another recipe \(prune.sparsity"):
        run_compare(changed, tmp_path, methods=["ns"], ratios=[0.3, 0.7], progress=False)


def test_the_real_cost_counts_each_shared_search_once() -> None:
    def row(method, ratio, total, search, folder):
        return {
            "method": method,
            "ratio": ratio,
            "total_flops": total,
            "seconds": total / 10,
            "search_flops": search,
            "search_seconds": search / 10,
            "shared_search": folder,
        }

    rows = [
        row("eb", 0.3, 100, 40, "eb_p30_p50"),
        row("eb", 0.5, 90, 60, "eb_p30_p50"),
        row("snip", 0.3, 50, 0, None),
        row("snip", 0.5, 30, 0, None),
    ]
    cost = shared_cost(rows)
    assert cost["eb"]["per_ratio_flops"] == 190
    assert cost["eb"]["shared_flops"] == 190 - 40  # the 60-FLOP search served both
    assert cost["eb"]["shared_seconds"] == pytest.approx(15.0)
    assert cost["snip"]["shared_flops"] == cost["snip"]["per_ratio_flops"] == 80


@pytest.mark.slow
def test_a_compare_killed_after_the_shared_dense_training_resumes_without_training_it(
    tmp_path, monkeypatch
) -> None:
    import ebcompress.methods.base as base

    recipe = load_recipe("quickstart", TINY)
    copy = base.copy_phase

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the dense phase")

    monkeypatch.setattr(base, "copy_phase", killed)
    with pytest.raises(KeyboardInterrupt):
        run_compare(recipe, tmp_path / "shared", methods=["ns"], ratios=RATIOS, progress=False)
    monkeypatch.setattr(base, "copy_phase", copy)
    checkpoint = tmp_path / "shared" / "shared" / "ns" / "checkpoints" / "search" / "last.pt"
    written = checkpoint.stat().st_mtime_ns
    run_compare(recipe, tmp_path / "shared", methods=["ns"], ratios=RATIOS, progress=False)
    assert checkpoint.stat().st_mtime_ns == written  # loaded by both ratios, never trained again
    monkeypatch.undo()
    run_compare(
        recipe, tmp_path / "alone", methods=["ns"], ratios=RATIOS, progress=False, shared=False
    )
    _same_runs(tmp_path / "shared", tmp_path / "alone", ["ns_p30", "ns_p70"])


@pytest.mark.slow
def test_a_second_retrain_protocol_reuses_the_shared_searches(tmp_path, monkeypatch) -> None:
    import ebcompress.methods.base as base

    paper = load_recipe("quickstart", TINY)
    finetune = load_recipe("quickstart", [*TINY, "retrain.schedule=continue", "retrain.epochs=1"])
    common = {"methods": ["eb", "ns"], "ratios": RATIOS, "progress": False}
    run_compare(paper, tmp_path / "paper", shared_dir=tmp_path / "searches", **common)
    fits = []
    fit = base.Trainer.fit

    def counting_fit(self, resume=False):
        fits.append((self.config.phase, resume))
        return fit(self, resume)

    monkeypatch.setattr(base.Trainer, "fit", counting_fit)
    dense = tmp_path / "searches" / "ns" / "checkpoints" / "search" / "last.pt"
    written = dense.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "paper" / "eb_p70")  # served from the shared search's record
    run_compare(paper, tmp_path / "paper", shared_dir=tmp_path / "searches", **common)
    run_compare(finetune, tmp_path / "finetune", shared_dir=tmp_path / "searches", **common)
    # no EB search ran; NS's two ratios loaded the finished dense phase without training it
    assert [f for f in fits if f[0] == "search"] == [("search", True), ("search", True)]
    assert dense.stat().st_mtime_ns == written
    monkeypatch.undo()
    run_compare(finetune, tmp_path / "alone", shared=False, **common)
    _same_runs(tmp_path / "finetune", tmp_path / "alone", ["eb_p30", "eb_p70", "ns_p30", "ns_p70"])


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_a_channels_last_compare_saves_its_searches_and_finishes(tmp_path, shared) -> None:
    # channels_last weights are strided; the search result must still be written (safetensors
    # refuses non-contiguous tensors) and the slim network retrained and exported
    recipe = load_recipe("quickstart", [*TINY, "train.channels_last=true"])
    result = run_compare(
        recipe, tmp_path, methods=["eb", "ns"], ratios=RATIOS, progress=False, shared=shared
    )
    assert [r["run_dir"] for r in result["rows"]] == ["eb_p30", "eb_p70", "ns_p30", "ns_p70"]
    for row in result["rows"]:
        assert (tmp_path / row["run_dir"] / "model" / "model.safetensors").is_file()


def test_a_compare_with_a_macs_budget_is_refused_in_one_line(tmp_path) -> None:
    recipe = load_recipe("quickstart", [*TINY, "prune.target_macs=0.5", "prune.watch_ratios=[]"])
    with pytest.raises(UserError, match="compare varies prune.ratio, which a budget"):
        run_compare(recipe, tmp_path, methods=["eb"], ratios=RATIOS, progress=False)
    assert not any(tmp_path.iterdir())

"""benchmarks/eb_emergence.py over seeds: resuming per seed and per ticket, the guards on a
resume, and the summary's target verdicts (tiny fake Fashion-MNIST; see test_bench_scripts)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from data_fakes import write_fake_fashion_mnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _emergence_report  # noqa: E402
import _emergence_store  # noqa: E402
import eb_emergence  # noqa: E402
import eb_vs_baselines  # noqa: E402
from test_bench_scripts import TINY, _sets  # noqa: E402

from ebcompress.channels.ticket import Ticket  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.recipe import load_recipe  # noqa: E402


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so nothing catches it)."""


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=48, n_test=20)


def _argv(root: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        *("--ratios", "0.5", "--draw-epochs", "1", "--retrain-epochs", "1", "--seeds", "0,1"),
        *("--data-root", str(root), "--results", str(tmp), "--stem", "e"),
        *("--runs", str(tmp / "runs")),
        *_sets(TINY),
        *extra,
    ]


def _counting(
    monkeypatch: pytest.MonkeyPatch, name: str, kill: tuple[int, int] | None = None
) -> list[int]:
    """Record the seed of each call of ``eb_emergence.<name>``; with ``kill=(seed, n)`` the
    n-th call for that seed is 'killed'."""
    calls: list[int] = []
    real = getattr(eb_emergence, name)

    def wrapper(recipe: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(recipe.seed)
        if kill is not None and calls.count(kill[0]) == kill[1] and calls[-1] == kill[0]:
            raise Killed
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(eb_emergence, name, wrapper)
    return calls


def _draws(run: dict[str, Any]) -> list[int]:
    """A finished run's draw epochs: 1, the final 3, and its emergence (2 or 3: epoch 2 unless
    the learning check saw epoch 1 at chance)."""
    emerged = run["emerged_epochs"]["0.5"]
    assert emerged in (2, 3)
    return sorted({1, 3, emerged})


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_searches_or_tickets(
    fashion_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = _argv(fashion_root, tmp_path)
    # Killed in seed 1's second retrain, after seed 0 finished.
    searches = _counting(monkeypatch, "search")
    retrains = _counting(monkeypatch, "retrain_ticket", kill=(1, 2))
    with pytest.raises(Killed):
        eb_emergence.main(argv)
    saved = json.loads((tmp_path / "e.json").read_text())
    seed0, seed1 = saved["runs"]["0"], saved["runs"]["1"]
    assert searches == [0, 1] and retrains.count(0) == len(_draws(seed0))
    assert seed0["finished"] and [p["draw_epoch"] for p in seed0["points"]] == _draws(seed0)
    assert "dense" in seed1 and len(seed1["points"]) == 1 and not seed1.get("finished")

    monkeypatch.undo()
    searches = _counting(monkeypatch, "search")
    retrains = _counting(monkeypatch, "retrain_ticket")
    result = eb_emergence.main(argv)
    assert searches == []  # both dense searches were recorded
    assert retrains == [1] * (len(_draws(seed1)) - 1)  # only seed 1's missing tickets
    assert result["runs"]["0"] == seed0  # finished work kept as it was
    assert [p["draw_epoch"] for p in result["runs"]["1"]["points"]] == _draws(seed1)
    assert seed1["points"][0] in result["runs"]["1"]["points"]  # kept, not retrained
    assert len(result["sessions"]) == 2
    assert result["wall_seconds"] == pytest.approx(
        sum(s["wall_seconds"] for s in result["sessions"])
    )

    # Everything finished: a rerun trains nothing and only renders again; a new seed adds on.
    trained = len(retrains)
    again = eb_emergence.main(argv)
    assert searches == [] and len(retrains) == trained
    (tmp_path / "e.md").unlink()
    redrawn = eb_emergence.main([*argv, "--report-only"])
    assert searches == [] and len(retrains) == trained and (tmp_path / "e.md").is_file()
    assert len(redrawn["sessions"]) == len(again["sessions"])  # a redraw is no session
    with pytest.raises(UserError, match="no results to redraw"):
        eb_emergence.main([*argv, "--report-only", "--stem", "other"])
    assert again["summary"]["ratios"] == result["summary"]["ratios"]
    more = eb_emergence.main(_argv(fashion_root, tmp_path, "--seeds", "2"))
    assert searches == [2] and retrains[trained:] == [2] * len(_draws(more["runs"]["2"]))
    assert more["seeds"] == [0, 1, 2] and more["summary"]["dense"]["n"] == 3

    # A changed config is refused before any training, naming the field; --fresh starts over.
    with pytest.raises(UserError, match=r"recipe\.train\.lr differ.*--fresh"):
        eb_emergence.main([*argv, "--set", "train.lr=0.01"])
    # A snapshot that is not what the search wrote is refused on the resume that needs it.
    record = json.loads((tmp_path / "e.json").read_text())
    record["runs"]["1"]["points"].pop()
    record["runs"]["1"].pop("finished")
    (tmp_path / "e.json").write_text(json.dumps(record))
    # ... but where the snapshots are gone altogether (another machine), the seed searches
    # again and keeps its retrained tickets, its dense run being the same
    shutil.move(tmp_path / "runs" / "seed1", tmp_path / "seed1_moved")
    searches.clear()
    elsewhere = eb_emergence.main(argv)
    assert searches == [1] and elsewhere["runs"]["1"]["finished"]
    assert elsewhere["runs"]["1"]["points"][:-1] == record["runs"]["1"]["points"]
    (tmp_path / "e.json").write_text(json.dumps(record))
    (tmp_path / "runs" / "seed1" / "epoch3.safetensors").write_bytes(b"not it")
    with pytest.raises(UserError, match="seed1/epoch3.safetensors is missing or not the file"):
        eb_emergence.main(argv)


def test_snapshots_round_trip_and_results_guards(tmp_path: Path) -> None:
    ticket = Ticket(kept={"g": (0, 2)}, widths={"g": 4}, ratio=0.3, epoch=2)
    state = {"w": torch.arange(6.0).reshape(2, 3).t(), "n": torch.tensor(3)}  # non-contiguous
    files = _emergence_store.save_snapshots(tmp_path, {2: state}, {2: {0.3: ticket}})
    assert sorted(files) == ["epoch2.safetensors", "tickets.json"]
    states, tickets = _emergence_store.load_snapshots(tmp_path, files)
    assert torch.equal(states[2]["w"], state["w"]) and int(states[2]["n"]) == 3
    assert tickets[2][0.3].kept == {"g": (0, 2)}
    with pytest.raises(UserError, match="tickets.json is missing or not the file"):
        _emergence_store.load_snapshots(tmp_path, {**files, "tickets.json": "0" * 64})

    recipe = {k: v for k, v in load_recipe("quickstart").to_dict().items() if k != "seed"}
    config = {"recipe": recipe, "ratios": [0.5]}
    path = tmp_path / "e.json"
    assert _emergence_store.open_results(path, config, fresh=False) is None  # no file yet
    path.write_text(json.dumps({"benchmark": "eb_emergence", "points": []}))  # format 1
    with pytest.raises(UserError, match="single-seed eb_emergence.py.*--fresh"):
        _emergence_store.open_results(path, config, fresh=False)
    assert _emergence_store.open_results(path, config, fresh=True) is None
    path.write_text(json.dumps({"format": 2, "config": config, "runs": {}}))
    assert _emergence_store.open_results(path, config, fresh=False)["runs"] == {}
    other = {**config, "ratios": [0.3]}
    with pytest.raises(UserError, match=r"\(ratios differ\)"):
        _emergence_store.open_results(path, other, fresh=False)
    # a file written before the schema grew a field: the field's default is no difference
    older = {**recipe, "train": {k: v for k, v in recipe["train"].items() if k != "ema"}}
    path.write_text(json.dumps({"format": 2, "config": {**config, "recipe": older}, "runs": {}}))
    assert _emergence_store.open_results(path, config, fresh=False)["runs"] == {}
    # ... nor when a session of today's code merges into it, or redraws it as it was read
    for ours in (config, {**config, "recipe": older}):
        mine = {"config": ours, "seeds": [], "runs": {}, "sessions": []}
        _emergence_store.merge_and_write(path, mine, None)
    changed = {**recipe, "train": {**recipe["train"], "lr": 0.5}}
    path.write_text(json.dumps({"format": 2, "config": {**config, "recipe": changed}, "runs": {}}))
    with pytest.raises(UserError, match=r"recipe\.train\.lr differ"):
        _emergence_store.open_results(path, config, fresh=False)
    path.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        _emergence_store.open_results(path, config, fresh=False)


def _point(ratio: float, epoch: int, top1: float, emerged: int | None) -> dict[str, Any]:
    return {
        "ratio": ratio,
        "draw_epoch": epoch,
        "test_top1": top1,
        "emerged_here": epoch == emerged,
    }


def _result(per_seed: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """A results dict as eb_emergence writes it, reduced to what the summary reads."""
    runs = {}
    for seed, spec in per_seed.items():
        emerged = spec["emerged"]
        points = [_point(r, e, top1, emerged[f"{r:g}"]) for (r, e), top1 in spec["top1"].items()]
        runs[seed] = {
            "dense": {"test_top1": spec["dense"]},
            "emerged_epochs": emerged,
            "points": points,
            "finished": True,
        }
    return {
        "config": {"ratios": [0.3, 0.7, 0.9], "draw_epochs": [2, 10]},
        "runs": runs,
        "seeds": seeds,
    }


def test_summary_judges_the_target_on_the_paired_difference_and_names_its_cause() -> None:
    # p=0.3: detected (epoch 5) 0.1 below final on average -> met. p=0.7: 0.5 below -> missed.
    # p=0.9: never detected -> missed, for that reason.
    spec = {
        "0": {
            "dense": 0.90,
            "emerged": {"0.3": 5, "0.7": 2, "0.9": None},
            "top1": {
                (0.3, 2): 0.80,
                (0.3, 5): 0.849,
                (0.3, 10): 0.850,
                (0.7, 2): 0.80,
                (0.7, 10): 0.806,
                (0.9, 2): 0.5,
                (0.9, 10): 0.6,
            },
        },
        "1": {
            "dense": 0.92,
            "emerged": {"0.3": 5, "0.7": 2, "0.9": None},
            "top1": {
                (0.3, 2): 0.82,
                (0.3, 5): 0.860,
                (0.3, 10): 0.861,
                (0.7, 2): 0.81,
                (0.7, 10): 0.814,
                (0.9, 2): 0.5,
                (0.9, 10): 0.6,
            },
        },
    }
    summary = _emergence_report.summarize(_result(spec, [0, 1, 2]))
    met, missed, never = (summary["ratios"][k] for k in ("0.3", "0.7", "0.9"))
    assert met["met"] and met["why"] is None
    assert met["detected_minus_final_points"]["mean"] == pytest.approx(-0.1)
    assert met["by_draw_epoch"]["2"]["mean"] == pytest.approx(81.0)
    assert met["by_draw_epoch"]["2"]["min"] == pytest.approx(80.0)
    diff = missed["detected_minus_final_points"]
    assert diff["mean"] == pytest.approx(-0.5) and diff["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert diff["ci"][0] < -0.5 < diff["ci"][1]
    assert not missed["met"] and "0.50 points below" in missed["why"]
    assert not never["met"] and "not detected within the schedule" in never["why"]
    assert not summary["met"]
    assert summary["dense"]["mean"] == pytest.approx(91.0)
    assert summary["seeds_finished"] == ["0", "1"] and summary["seeds_requested"][-1] == "2"

    result = {**_result(spec, [0, 1, 2]), "summary": summary}
    lines = "\n".join(_emergence_report._target_lines(summary))
    assert "**missed**" in lines and "| 0.3 | 0: 5, 1: 5 |" in lines
    assert "missed: the detected tickets retrain 0.50 points below" in lines
    assert "**Partial**: 2 of 3 seeds" in lines
    assert result["summary"]["target"] == _emergence_report.TARGET


def test_a_ticket_retrained_to_chance_is_named_not_counted_as_agreement() -> None:
    # p=0.3: the final ticket collapsed (met, with the caveat); p=0.7: both collapsed, the
    # paired difference is 0, and still missed: a broken detected ticket matches nothing.
    spec = {
        "0": {
            "dense": 0.90,
            "emerged": {"0.3": 2, "0.7": 2, "0.9": 2},
            "top1": {(0.3, 2): 0.85, (0.3, 10): 0.10, (0.7, 2): 0.10, (0.7, 10): 0.10},
        }
    }
    result = _result(spec, [0])
    result["runs"]["0"]["chance_top1"] = 0.1
    summary = _emergence_report.summarize(result)
    late, both = summary["ratios"]["0.3"], summary["ratios"]["0.7"]
    assert late["met"] and "final-epoch ticket retrains to chance at seed(s) 0" in late["caveat"]
    assert not both["met"] and "detected ticket retrains to chance at seed(s) 0" in both["why"]
    lines = "\n".join(_emergence_report._target_lines(summary))
    assert "| met (the final-epoch ticket retrains to chance" in lines
    del result["runs"]["0"]["chance_top1"]  # recorded before the benchmark kept it
    assert _emergence_report.summarize(result)["ratios"]["0.7"]["met"]


def test_seeds_and_budgets() -> None:
    assert eb_emergence.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "a,b", "1,1"):
        with pytest.raises(UserError, match="--seeds"):
            eb_emergence.parse_seeds(bad)
    assert eb_emergence.BUDGETS["full"]["seeds"] == (0, 1, 2)
    assert eb_emergence.BUDGETS["short"]["seeds"] == (0,)
    full = eb_vs_baselines.budget_recipe("fashion_mnist_vgg_p30", "full", [])
    big = eb_emergence.load_recipe(
        "fashion_mnist_vgg_p30", list(eb_emergence.BUDGETS["fullscale"]["overrides"])
    )
    assert full.data.train_subset == 4000 and full.data.image_size == 16
    assert (big.data.image_size, big.data.train_subset, big.data.test_subset) == (28, None, None)
    assert big.train == full.train and big.prune == full.prune  # only the data grows


def test_the_targets_points_retrain_first() -> None:
    order = eb_emergence.retrain_order([0.3, 0.7], [2, 5, 20], {"0.3": 11, "0.7": None})
    assert order[:3] == [(0.3, 11), (0.3, 20), (0.7, 20)]  # detected and final tickets
    assert sorted(order[3:]) == [(0.3, 2), (0.3, 5), (0.7, 2), (0.7, 5)]
    assert len(set(order)) == len(order)


def test_sessions_side_by_side_keep_each_others_seeds(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    config = {"ratios": [0.5]}

    def opened(name: str, seeds: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A session's view at its start: the file as it was, plus its own record."""
        result = (
            json.loads(path.read_text())
            if path.is_file()
            else {"config": config, "seeds": [], "runs": {}, "sessions": [], "wall_seconds": 0}
        )
        record = {"id": name, "seeds": seeds, "active": [], "wall_seconds": 10.0}
        result["sessions"].append(record)
        result["seeds"] += [s for s in seeds if s not in result["seeds"]]
        return result, record

    def start(result: dict[str, Any], record: dict[str, Any], seed: int) -> dict[str, Any]:
        """What Session.start_seed does: take the file's run of the seed, then own it."""
        _emergence_store.merge_and_write(path, result, record)
        record["active"].append(seed)
        return result["runs"].setdefault(str(seed), {"points": []})

    every, every_record = opened("all", [0, 1, 2])  # the budget's seeds ...
    one, one_record = opened("one", [1])  # ... and seed 1 beside it, opened before any write
    start(one, one_record, 1)["points"].append("b")
    _emergence_store.merge_and_write(path, one, one_record)
    start(every, every_record, 0)["points"].append("a")
    _emergence_store.merge_and_write(path, every, every_record)  # seed 1 is not its own yet
    assert json.loads(path.read_text())["runs"]["1"] == {"points": ["b"]}
    start(every, every_record, 1)["points"].append("c")  # continues from the file's seed 1
    _emergence_store.merge_and_write(path, every, every_record)

    disk = json.loads(path.read_text())
    assert disk["runs"] == {"0": {"points": ["a"]}, "1": {"points": ["b", "c"]}}
    assert sorted(s["id"] for s in disk["sessions"]) == ["all", "one"]
    assert sorted(disk["seeds"]) == [0, 1, 2] and disk["wall_seconds"] == 20.0
    summaries: list[int] = []
    redraw = json.loads(path.read_text())
    redraw["runs"] = {}  # a redraw owns no seed: it takes every run from the file
    _emergence_store.merge_and_write(
        path, redraw, None, lambda merged: summaries.append(len(merged["runs"]))
    )
    assert redraw["runs"] == disk["runs"] and len(redraw["sessions"]) == 2
    assert summaries == [2]  # on_merged sees the merged runs
    # a session of another config may not write into the file; --fresh sets it aside
    other, other_record = opened("other", [3])
    other["config"] = {"ratios": [0.3]}
    with pytest.raises(UserError, match="another config; give this one its own --stem"):
        _emergence_store.merge_and_write(path, other, other_record)
    aside = _emergence_store.set_aside(path)
    assert not path.exists() and json.loads(aside.read_text()) == redraw
    assert _emergence_store.set_aside(path) is None

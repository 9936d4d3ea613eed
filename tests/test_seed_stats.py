"""benchmarks/_seed_stats.py: means over seeds, paired t-intervals, run provenance."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _seed_stats  # noqa: E402
from _seed_stats import mean_sd, paired_difference, provenance  # noqa: E402

# Student-t quantiles from a printed table (not from scipy, which the module uses).
T_975_DF2 = 4.302652729911275
T_975_DF1 = 12.706204736174705
T_95_DF4 = 2.131846786326649


def test_mean_sd_is_the_sample_sd_and_safe_for_one_value() -> None:
    mean, sd = mean_sd([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert mean == 5.0
    assert sd == pytest.approx(math.sqrt(32 / 7))  # ddof=1, not the population sd 2.0
    assert mean_sd([0.91]) == (0.91, None)
    assert mean_sd(iter([1, 3])) == (2.0, pytest.approx(math.sqrt(2)))
    with pytest.raises(ValueError, match="no values"):
        mean_sd([])


def test_paired_difference_matches_a_hand_computed_t_interval() -> None:
    a = {0: 1.0, 1: 2.0, 2: 4.0}
    b = {0: 0.0, 1: 0.0, 2: 0.0, 3: 5.0}  # seed 3 has no partner: left out
    out = paired_difference(a, b)
    assert out["n"] == 3 and out["seeds"] == ["0", "1", "2"]
    assert out["mean"] == pytest.approx(7 / 3)
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert out["sd"] == pytest.approx(sd)
    half = T_975_DF2 * sd / math.sqrt(3)
    assert out["ci"] == pytest.approx([7 / 3 - half, 7 / 3 + half])
    assert out["confidence"] == 0.95


def test_paired_difference_other_confidence_and_direction() -> None:
    a = {s: v for s, v in enumerate([0.90, 0.91, 0.89, 0.92, 0.90])}
    b = {s: v for s, v in enumerate([0.91, 0.91, 0.90, 0.90, 0.92])}
    out = paired_difference(a, b, confidence=0.90)
    diffs = [-0.01, 0.0, -0.01, 0.02, -0.02]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    half = T_95_DF4 * sd / math.sqrt(5)
    assert out["mean"] == pytest.approx(mean)
    assert out["ci"] == pytest.approx([mean - half, mean + half])
    # a - b, not b - a
    assert paired_difference(b, a, confidence=0.90)["mean"] == pytest.approx(-mean)


def test_paired_difference_edge_cases() -> None:
    # Two seeds: the widest interval, df = 1.
    two = paired_difference({0: 1.0, 1: 3.0}, {0: 0.0, 1: 0.0})
    half = T_975_DF1 * math.sqrt(2) / math.sqrt(2)
    assert two["ci"] == pytest.approx([2.0 - half, 2.0 + half])
    # One shared seed: a difference, but no spread and no interval.
    one = paired_difference({0: 0.9, 1: 0.8}, {1: 0.7, 2: 0.6})
    assert one["n"] == 1 and one["mean"] == pytest.approx(0.1)
    assert one["sd"] is None and one["ci"] is None
    # No shared seed: nothing to say, and nothing NaN.
    none = paired_difference({0: 0.9}, {1: 0.7})
    assert none == {
        "n": 0,
        "seeds": [],
        "mean": None,
        "sd": None,
        "confidence": 0.95,
        "ci": None,
    }
    # Identical differences: zero spread, a zero-width interval.
    flat = paired_difference({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert flat["sd"] == 0.0 and flat["ci"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference({0: 1.0}, {0: 1.0}, confidence=95)


def test_paired_difference_pairs_json_string_seeds_with_int_seeds() -> None:
    a = json.loads(json.dumps({0: 0.9, 1: 0.8, 10: 0.7, 2: 0.6}))  # keys now "0", "1", ...
    out = paired_difference(a, {0: 0.5, 1: 0.5, 2: 0.5, 10: 0.5})
    assert out["n"] == 4
    assert out["seeds"] == ["0", "1", "2", "10"]  # numeric order, not "10" before "2"


def test_provenance_records_machine_versions_and_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    info = provenance()
    for key in ("date", "platform", "cpu_count", "torch_threads", "load_average", "versions"):
        assert key in info
    assert info["date"].endswith("+00:00")  # UTC
    assert len(info["load_average"]) == 3
    assert set(info["versions"]) == set(_seed_stats.PACKAGES)
    assert info["versions"]["torch"] and info["versions"]["ebcompress"]
    commit = info["git_commit"]
    assert commit is None or (len(commit) == 40 and int(commit, 16) >= 0)
    json.dumps(info)  # goes into results files as it is
    # No git (or no repository): None, never an exception.
    monkeypatch.setattr(_seed_stats, "REPO", Path("/"))
    monkeypatch.setenv("PATH", "/nonexistent")
    bare = provenance()
    assert bare["git_commit"] is None and bare["git_dirty"] is None

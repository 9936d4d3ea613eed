"""The shipped ``digits_timm_stack`` recipe: AdamW + cosine with warmup + EMA + distillation +
a MACs budget, together in one run (shortened)."""

from __future__ import annotations

import pytest

from ebcompress.recipe import load_recipe
from ebcompress.run.pipeline import run_pipeline

SHORT = [
    "train.epochs=4",
    "train.warmup_epochs=1",
    "train.batch_size=64",
    "data.train_subset=256",
    "data.test_subset=100",
    "prune.window=2",
    "prune.epsilon=0.5",
    "prune.learning_margin=0.05",
]


@pytest.mark.slow
def test_every_part_of_the_stack_reaches_the_run(tmp_path) -> None:
    recipe = load_recipe("digits_timm_stack", SHORT)
    assert recipe.train.optimizer == "adamw" and recipe.train.schedule == "cosine"
    report = run_pipeline(recipe, tmp_path / "run", progress=False)
    budget = report["model"]["slim"]["macs"] / report["model"]["dense"]["macs"]
    assert budget <= 0.4  # the MACs budget holds on the retrained slim network
    distill = report["retrain"]["distill"]
    assert distill["teacher"] == "dense" and distill["alpha"] == 0.7
    (retrain,) = [p for p in report["cost"]["phases"] if p["phase"] == "retrain"]
    assert retrain["teacher_macs_per_sample"] == distill["teacher_macs"] > 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum('"ema_test_top1"' in line for line in lines) >= recipe.train.epochs

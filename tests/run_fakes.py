"""Finished run directories written with the real classes (MaskHistory, Ticket, TrainingLedger,
EpochStats, Recipe, RunResults, RunState, RunPaths) in the pipeline's layout, without
training: fast fixtures for the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import FlopCount, TrainingLedger
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.engine.trainer import EpochStats
from ebcompress.recipe import load_recipe
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import (
    Accuracy,
    CostSummary,
    DataSummary,
    ModelSummary,
    RetrainSummary,
    RunResults,
    SearchSummary,
    TicketSummary,
)
from ebcompress.run.state import RunState

TRAIN_SAMPLES = 1000
TEST_SAMPLES = 200
DENSE_MACS = 2_000_000


def _widths(num_groups: int, rng: np.random.Generator) -> dict[str, int]:
    # ResNet-like names, long enough to test label readability.
    return {
        f"layer{i // 4 + 1}.{i % 4}.conv{i % 3 + 1}": int(rng.choice([16, 32, 64]))
        for i in range(num_groups)
    }


def _keep_top(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Global keep-mask removing the ``ratio`` lowest scores (what draw_ticket does)."""
    mask = np.zeros(scores.size, dtype=bool)
    mask[np.argsort(-scores, kind="stable")[: scores.size - int(ratio * scores.size)]] = True
    return mask


def _epoch(phase: str, epoch: int, lr: float, rng: np.random.Generator) -> EpochStats:
    progress = 1 - math.exp(-0.25 * epoch)
    return EpochStats(
        phase=phase,
        epoch=epoch,
        lr=lr,
        train_loss=2.3 * (1 - progress) + 0.05 + 0.02 * rng.random(),
        train_top1=0.1 + 0.85 * progress,
        test_loss=2.3 * (1 - progress) + 0.15 + 0.05 * rng.random(),
        test_top1=0.1 + 0.8 * progress,
        test_top5=min(1.0, 0.5 + 0.5 * progress),
        seconds=1.5 if phase == "search" else 0.8,
        images_per_s=TRAIN_SAMPLES / 1.5,
        samples=TRAIN_SAMPLES,
    )


def _search_masks(
    widths: dict[str, int], ratios: list[float], epsilon: float, window: int, epochs: int,
    rng: np.random.Generator,
) -> tuple[MaskHistory, dict[str, int | None], int]:  # fmt: skip
    """Masks of BN scales that settle as training goes on; stops once the first ratio emerges."""
    history = MaskHistory(window)
    base = rng.random(sum(widths.values()))
    emerged: dict[str, int | None] = {f"{r:g}": None for r in ratios}
    for epoch in range(1, epochs + 1):
        scores = base + rng.normal(0.0, 0.6 / epoch**1.5, base.size)
        for ratio in ratios:
            history.append(ratio, epoch, _keep_top(scores, ratio))
            latest = history.latest_window_max(ratio)
            if emerged[f"{ratio:g}"] is None and latest is not None and latest < epsilon:
                emerged[f"{ratio:g}"] = epoch
        if emerged[f"{ratios[0]:g}"] is not None:
            return history, emerged, epoch
    return history, emerged, epochs


def make_fake_run_dir(
    path: str | Path,
    *,
    method: str = "eb",
    num_groups: int = 8,
    schedule_epochs: int = 20,
    joules: bool = False,
    status: str = "finished",
    seed: int = 0,
    final_top1: float = 0.91,
) -> Path:
    """Write a run directory as ``run_pipeline`` leaves it (minus checkpoints/ and model/).

    ``method="eb"`` records masks/ for ratios 0.3, 0.5 and 0.7 and stops the search when the
    0.3 ticket emerges; any other method trains the dense net for the whole schedule and
    writes no masks/. ``joules`` makes every phase measured; ``status`` other than "finished"
    leaves an unfinished run (state.json without results). ``final_top1`` is the retrained
    accuracy (the chance level is 10 %).
    """
    run_dir = Path(path)
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    milestones = [schedule_epochs // 2, schedule_epochs * 3 // 4]
    recipe = load_recipe(
        "quickstart",
        [
            f"prune.method={method}",
            f"train.epochs={schedule_epochs}",
            f"train.milestones=[{milestones[0]},{milestones[1]}]",
            *([] if method == "eb" else ["retrain.epochs=5"]),
        ],
    )
    paths.recipe.write_text(recipe.to_yaml(), encoding="utf-8")
    if status != "finished":
        paths.state.write_text(json.dumps(RunState(status=status, method=method).to_dict()))
        return run_dir

    widths = _widths(num_groups, rng)
    prune = recipe.prune
    ratios = [prune.ratio, *prune.watch_ratios]
    search: SearchSummary
    if method == "eb":
        history, emerged, search_epochs = _search_masks(
            widths, ratios, prune.epsilon, prune.window, schedule_epochs - 2, rng
        )
        history.save(paths.masks)
        mask = history.mask(prune.ratio, search_epochs)
        search = SearchSummary(
            epochs=search_epochs,
            emerged_epochs=emerged,
            window_max_distances={f"{r:g}": history.window_max_distances(r) for r in ratios},
        )
        start = search_epochs
    else:
        search_epochs = schedule_epochs
        mask = _keep_top(rng.random(sum(widths.values())), prune.ratio)
        search = SearchSummary(epochs=search_epochs, extra={"sparsity": prune.sparsity})
        start = schedule_epochs - 5
    ticket = Ticket.from_mask(
        mask, widths, ratio=prune.ratio, epoch=search_epochs, model_name=recipe.model.name
    )
    ticket.save(paths.ticket)

    slim_macs = int(DENSE_MACS * (ticket.num_kept / ticket.num_channels) ** 2)
    ledger = TrainingLedger()
    records = []
    for phase, first, last, macs in (
        ("search", 1, search_epochs, DENSE_MACS),
        ("retrain", start + 1, schedule_epochs, slim_macs),
    ):
        for epoch in range(first, last + 1):
            lr = recipe.train.lr * recipe.train.gamma ** sum(epoch > m for m in milestones)
            stats = _epoch(phase, epoch, lr, rng)
            records.append(stats.to_dict())
            ledger.add(phase, macs_per_sample=macs, samples=stats.samples, seconds=stats.seconds,
                       joules=stats.seconds * 95.0 if joules else None)  # fmt: skip
    paths.metrics.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    dense_params, slim_params = 500_000, int(500_000 * ticket.num_kept / ticket.num_channels)
    results = RunResults(
        run=recipe.name,
        method=method,
        seed=recipe.seed,
        data=DataSummary(
            name=recipe.data.name, train=TRAIN_SAMPLES, test=TEST_SAMPLES, chance_top1=0.1
        ),
        ticket=TicketSummary(
            ratio=ticket.ratio,
            epoch=ticket.epoch,
            emerged=True,
            note="",
            pruned_fraction=ticket.pruned_fraction,
            num_channels=ticket.num_channels,
            num_kept=ticket.num_kept,
        ),
        search=search,
        retrain=RetrainSummary(
            mode="inherit",
            schedule="continue",  # the retrain resumes the dense schedule at ``start``
            start_epoch=start,
            end_epoch=schedule_epochs,
            history_epochs=schedule_epochs - start,
        ),
        accuracy=Accuracy(test_top1=final_top1, test_top5=0.995, test_loss=0.31),
        cost=CostSummary(
            ledger=ledger,
            dense_reference_flops=ledger.dense_reference(
                DENSE_MACS, TRAIN_SAMPLES, schedule_epochs
            ),
        ),
        model=ModelSummary(
            name=recipe.model.name,
            input_size=(1, 16, 16),
            dense=FlopCount(macs=DENSE_MACS, params=dense_params),
            slim=FlopCount(macs=slim_macs, params=slim_params),
        ),
    )
    state = RunState(
        status="finished", method=method, results=results, updated="2026-01-01T00:00:00+0000"
    )
    paths.state.write_text(json.dumps(state.to_dict(), indent=1) + "\n", encoding="utf-8")
    return run_dir

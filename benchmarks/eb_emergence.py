"""Do early tickets match late ones? The paper's Figure 1 on real Fashion-MNIST.

One dense run with the BN-L1 penalty trains the recipe's whole schedule while an
:class:`ebcompress.EarlyBird` detector records every epoch's mask at each ratio and never
stops it. The dense weights and masks are kept at fixed draw epochs (the paper's 2, 5, 10,
20, 40 that fall inside the schedule, plus the final epoch) and at the epoch where the mask
distance detected emergence. Each ticket is then slimmed with :func:`ebcompress.channels.slim` and
retrained the same way: inheriting its weights, on the dense schedule restarted from epoch 0
(You et al., ICLR 2020, Sec. 3.1: "for retraining the tickets, we keep the same setting"),
``--retrain-epochs`` long (default: the recipe's epochs, milestones scaled). With
``--set retrain.mode=reinit`` every ticket restarts from the same fresh initialisation
instead, so only its structure differs (the paper's reference code did this unawares).

Writes ``<results>/<stem>.{json,md,png}``: retrain accuracy against draw epoch per ratio, the
emergence epoch marked, the dense model's accuracy as a dashed line, and the window's mask
distance per epoch next to epsilon. The JSON is rewritten after every retrained ticket, so
an interrupted run keeps what it finished.

    python benchmarks/eb_emergence.py                  # full
    python benchmarks/eb_emergence.py --budget short   # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import RESULTS, SHORT_OVERRIDES, machine_line  # noqa: E402
from eb_vs_baselines import budget_stem  # noqa: E402

from ebcompress.channels.slim import slim  # noqa: E402
from ebcompress.channels.ticket import Ticket  # noqa: E402
from ebcompress.cost.flops import count_flops, training_flops  # noqa: E402
from ebcompress.data import DataSplit, load_data  # noqa: E402
from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.earlybird.detector import EarlyBird  # noqa: E402
from ebcompress.engine.stats import EpochStats  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.methods.base import RetrainPlan  # noqa: E402
from ebcompress.methods.data import data_options  # noqa: E402
from ebcompress.methods.eb_train import early_bird_for  # noqa: E402
from ebcompress.methods.training import build_trainer, retrain_schedule  # noqa: E402
from ebcompress.models import build_model  # noqa: E402
from ebcompress.recipe import Recipe, load_recipe  # noqa: E402
from ebcompress.report.plots import new_figure, save_figure  # noqa: E402

PAPER_DRAW_EPOCHS = (2, 5, 10, 20, 40)
EPSILONS = (0.05, 0.08, 0.1, 0.12, 0.15, 0.2)  # what-if thresholds, read off the recorded run
RATIOS = (0.3, 0.5, 0.7)
BUDGETS: dict[str, dict[str, Any]] = {
    "full": {"overrides": (), "retrain_epochs": None},
    "short": {
        "overrides": SHORT_OVERRIDES,
        "retrain_epochs": 5,
    },
}


class DrawRecorder:
    """Engine callback: runs the Early-Bird detector every epoch without ever stopping the
    phase, and keeps the dense weights and each ratio's mask at the draw epochs and at each
    ratio's emergence epoch."""

    def __init__(self, bird: EarlyBird, model: nn.Module, draw_epochs: set[int]) -> None:
        self.bird, self.model, self.draw_epochs = bird, model, draw_epochs
        self.states: dict[int, dict[str, Tensor]] = {}
        self.tickets: dict[int, dict[float, Ticket]] = {}
        self.test_top1: dict[int, float] = {}

    def after_backward(self, model: nn.Module) -> None:
        self.bird.regularize()

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        self.bird.step(epoch)
        self.test_top1[epoch] = stats.test_top1
        emerged_now = epoch in self.bird.emerged_epoch.values()
        if epoch in self.draw_epochs or emerged_now:
            self.states[epoch] = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            self.tickets[epoch] = {r: self.bird.latest_ticket(r) for r in self.bird.ratios}
        return False


def draw_epochs_for(epochs: int, requested: list[int]) -> list[int]:
    """The requested draw epochs inside the schedule, plus its final epoch."""
    return sorted({e for e in requested if 0 < e < epochs} | {epochs})


def emergence_by_epsilon(
    distances: list[float | None], epsilons: tuple[float, ...] = EPSILONS
) -> dict[str, int | None]:
    """The epoch each ``epsilon`` would have declared emergence at, from one ratio's recorded
    window distances (1-based epochs; None: never within the schedule)."""
    return {
        f"{eps:g}": next(
            (e for e, d in enumerate(distances, start=1) if d is not None and d < eps), None
        )
        for eps in epsilons
    }


def search(
    recipe: Recipe, data: DataSplit, ratios: list[float], draws: list[int], device: str
) -> tuple[DrawRecorder, EarlyBird, dict[str, Any]]:
    """The dense BN-L1 run over the whole schedule, recording masks and snapshots."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
    model = model.to(device)
    example = torch.randn(1, data.in_chans, data.image_size, data.image_size, device=device)
    bird = early_bird_for(recipe, model, example, ratios)
    recorder = DrawRecorder(bird, model, set(draws))
    trainer = build_trainer(
        model, data, recipe, "search", device=device, progress=False, callbacks=[recorder]
    )
    start = time.perf_counter()
    history = trainer.fit()
    dense = {
        "test_top1": history[-1].test_top1,
        "macs": count_flops(model, (data.in_chans, data.image_size, data.image_size)).macs,
        "seconds": time.perf_counter() - start,
        "train_seconds": sum(s.seconds for s in history),
        "test_top1_per_epoch": [s.test_top1 for s in history],
    }
    return recorder, bird, dense


def retrain_ticket(
    recipe: Recipe,
    data: DataSplit,
    state: dict[str, Tensor],
    ticket: Ticket,
    epochs: int,
    device: str,
) -> dict[str, Any]:
    """Slim the dense snapshot to ``ticket`` and retrain it for ``epochs`` epochs on the dense
    schedule restarted and scaled (as the pipeline retrains); its accuracy, size and cost."""
    torch.manual_seed(recipe.seed)  # reinit: every ticket starts from the same initialisation
    model = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
    if recipe.retrain.mode != "reinit":
        model.load_state_dict(state)
    model = model.to(device).train()
    example = torch.randn(1, data.in_chans, data.image_size, data.image_size, device=device)
    slim_model = slim(model, ticket, example)
    cost = count_flops(slim_model, (data.in_chans, data.image_size, data.image_size))
    torch.manual_seed(recipe.seed + 1)
    plan = RetrainPlan(start_epoch=0, end_epoch=epochs)
    trainer = build_trainer(
        slim_model, data, recipe, "retrain", device=device, progress=False, plan=plan
    )
    start = time.perf_counter()
    history = trainer.fit()
    return {
        "test_top1": trainer.evaluate()["top1"],
        "best_top1": max(s.test_top1 for s in history),
        "macs": cost.macs,
        "params": cost.params,
        "seconds": time.perf_counter() - start,
    }


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: retrain top-1 vs draw epoch per ratio, emergence starred, dense dashed.
    Right: the window's max mask distance per epoch per ratio, with epsilon."""
    figure = new_figure(10, 4)
    acc_ax, dist_ax = figure.subplots(1, 2)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for index, ratio in enumerate(result["ratios"]):
        colour = colours[index % len(colours)]
        points = sorted(
            (p for p in result["points"] if p["ratio"] == ratio), key=lambda p: p["draw_epoch"]
        )
        if points:
            acc_ax.plot(
                [p["draw_epoch"] for p in points],
                [100 * p["test_top1"] for p in points],
                marker="o",
                color=colour,
                label=f"p={ratio:g}",
            )
        emerged = result["emerged_epochs"].get(f"{ratio:g}")
        star = [p for p in points if p["draw_epoch"] == emerged]
        if star:
            acc_ax.plot(emerged, 100 * star[0]["test_top1"], marker="*", ms=16, color=colour)
        if emerged is not None:
            acc_ax.axvline(emerged, color=colour, ls=":", lw=1)
        trace = result["window_max_distances"][f"{ratio:g}"]
        epochs = [e for e, d in enumerate(trace, start=1) if d is not None]
        dist_ax.plot(
            epochs, [d for d in trace if d is not None], color=colour, label=f"p={ratio:g}"
        )
    acc_ax.axhline(100 * result["dense"]["test_top1"], color="grey", ls="--", label="dense")
    acc_ax.set_xlabel("epoch the ticket was drawn at (star: detected emergence)")
    acc_ax.set_ylabel("retrain top-1 (%)")
    acc_ax.legend(fontsize=8)
    acc_ax.set_title("retraining accuracy of tickets drawn at each epoch", fontsize=10)
    dist_ax.axhline(result["recipe"]["prune"]["epsilon"], color="grey", ls="--", label="epsilon")
    dist_ax.set_xlabel("epoch")
    dist_ax.set_ylabel(f"max mask distance in window of {result['recipe']['prune']['window']}")
    dist_ax.legend(fontsize=8)
    dist_ax.set_title("Early-Bird statistic during the dense run", fontsize=10)
    return save_figure(figure, path)


def markdown(result: dict[str, Any], png: str) -> str:
    config = result["recipe"]
    train, data = config["train"], config["data"]
    lines = [
        "# Early-Bird emergence on Fashion-MNIST (the paper's Figure 1)",
        "",
        machine_line(result["machine"]),
        f"Budget `{result['budget']}`, {result['wall_seconds'] / 60:.1f} min in all.",
        "",
        f"Config: `{config['model']['name']}` {config['model']['kwargs']}, {data['name']} "
        f"{data['image_size']} px, {data['train_subset'] or 'all'} train / "
        f"{data['test_subset'] or 'all'} test images; dense {train['epochs']} epochs, lr "
        f"{train['lr']:g} (x{train['gamma']:g} at {train['milestones']}), BN-L1 s = "
        f"{config['prune']['sparsity']:g}, epsilon {config['prune']['epsilon']:g}, window "
        f"{config['prune']['window']}. Each ticket retrained {result['retrain_epochs']} epochs "
        f"(milestones {result['retrain_milestones']}), "
        + (
            "each from the same fresh initialisation (only the ticket differs)."
            if config["retrain"]["mode"] == "reinit"
            else "inheriting its weights."
        ),
        "",
        f"Dense model: {100 * result['dense']['test_top1']:.2f} % top-1.",
        "",
        "| p | draw epoch | retrain top-1 % | best % | MACs | params | total train FLOPs |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        mark = " (emergence)" if p["emerged_here"] else ""
        lines.append(
            f"| {p['ratio']:g} | {p['draw_epoch']}{mark} | {100 * p['test_top1']:.2f} | "
            f"{100 * p['best_top1']:.2f} | {p['macs']:,} | {p['params']:,} | "
            f"{p['total_flops']:.3e} |"
        )
    emerged = ", ".join(
        f"p={r}: {'epoch ' + str(e) if e is not None else 'not within the schedule'}"
        for r, e in result["emerged_epochs"].items()
    )
    lines += [
        "",
        f"Emergence detected (max window distance < epsilon): {emerged}.",
        "total train FLOPs: dense epochs up to the draw + the ticket's retraining.",
        "",
        "Where another epsilon would have declared emergence (same recorded masks):",
        "",
        "| p | " + " | ".join(f"eps {e:g}" for e in EPSILONS) + " |",
        "|---|" + "---|" * len(EPSILONS),
    ]
    for ratio, by_eps in result["emergence_by_epsilon"].items():
        cells = [str(e) if e is not None else "-" for e in by_eps.values()]
        lines.append(f"| {ratio} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![retrain accuracy vs draw epoch]({png})",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion_mnist_vgg_p30")
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    parser.add_argument(
        "--draw-epochs", default=",".join(map(str, PAPER_DRAW_EPOCHS)), help="+ the final epoch"
    )
    parser.add_argument("--retrain-epochs", type=int, default=None, help="default: by budget")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None, help="<results>/<stem>.* (default: by budget)")
    # One thread by default: on this 2-core host two threads ran 1.5x faster when it was quiet
    # but 4x slower at load average 4 (other jobs), so a shared host gets the safe choice.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    stem = args.stem or budget_stem("eb_emergence", args.budget)
    recipe = load_recipe(args.recipe, [*budget["overrides"], *args.overrides])
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    draws = draw_epochs_for(recipe.train.epochs, [int(e) for e in args.draw_epochs.split(",")])
    retrain_epochs = args.retrain_epochs or budget["retrain_epochs"] or recipe.train.epochs
    schedule = retrain_schedule(recipe.train, retrain_epochs)
    data = load_data(data_options(recipe.data), root=args.data_root, seed=recipe.seed)

    start, machine = time.perf_counter(), machine_info(args.device)
    recorder, bird, dense = search(recipe, data, ratios, draws, args.device)
    emerged = {f"{r:g}": bird.emerged_epoch[r] for r in ratios}
    traces = {f"{r:g}": bird.history.window_max_distances(r) for r in ratios}
    result: dict[str, Any] = {
        "benchmark": "eb_emergence",
        "machine": machine,
        "budget": args.budget,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "recipe": recipe.to_dict(),
        "ratios": ratios,
        "draw_epochs": draws,
        "retrain_epochs": retrain_epochs,
        "retrain_milestones": schedule.milestones,
        "dense": dense,
        "emerged_epochs": emerged,
        "window_max_distances": traces,
        "emergence_by_epsilon": {r: emergence_by_epsilon(t) for r, t in traces.items()},
        "load_average_start": os.getloadavg()[0],
        "points": [],
        "wall_seconds": 0.0,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    samples = len(data.train)
    for ratio in ratios:
        epochs = sorted(set(draws) | ({emerged[f"{ratio:g}"]} - {None}))
        for epoch in epochs:
            ticket = recorder.tickets[epoch][ratio]
            state = recorder.states[epoch]
            point = retrain_ticket(recipe, data, state, ticket, retrain_epochs, args.device)
            flops = training_flops(dense["macs"], samples, epoch) + training_flops(
                point["macs"], samples, retrain_epochs
            )
            result["points"].append(
                {
                    "ratio": ratio,
                    "draw_epoch": epoch,
                    "emerged_here": epoch == emerged[f"{ratio:g}"],
                    "dense_top1_at_draw": recorder.test_top1[epoch],
                    "total_flops": flops,
                    **point,
                }
            )
            print(
                f"p={ratio:g} drawn at epoch {epoch}: retrain top-1 "
                f"{100 * point['test_top1']:.2f} %",
                flush=True,
            )
            result["wall_seconds"] = time.perf_counter() - start
            _write(args.results, stem, result)
    result["wall_seconds"] = time.perf_counter() - start
    _write(args.results, stem, result)
    png = plot(result, args.results / f"{stem}.png").name
    text = markdown(result, png)
    (args.results / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text)
    return result


def _write(folder: Path, stem: str, result: dict[str, Any]) -> None:
    path = folder / f"{stem}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

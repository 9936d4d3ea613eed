"""Do early tickets match late ones? The paper's Figure 1 on real Fashion-MNIST, over seeds.

Per seed, one dense run with the BN-L1 penalty trains the recipe's whole schedule while an
:class:`ebcompress.EarlyBird` detector records every epoch's mask at each ratio and never
stops it. The dense weights and masks are kept at fixed draw epochs (the paper's 2, 5, 10,
20, 40 that fall inside the schedule, plus the final epoch) and at the epoch where the mask
distance detected emergence. Each ticket is then slimmed with :func:`ebcompress.channels.slim` and
retrained the same way: inheriting its weights, on the dense schedule restarted from epoch 0
(You et al., ICLR 2020, Sec. 3.1: "for retraining the tickets, we keep the same setting"),
``--retrain-epochs`` long (default: the recipe's epochs, milestones scaled). With
``--set retrain.mode=reinit`` every ticket restarts from its seed's fresh initialisation
instead, so only its structure differs (the paper's reference code did this unawares). A seed
is the recipe's ``seed``: initialisation, data order and the train/test subsets.

Writes ``<results>/<stem>.{json,md,png}``: per ratio the mean retrain accuracy against draw
epoch with min-max bars over seeds, each seed's emergence marked, the dense accuracy dashed,
and the target "the detected tickets are within 0.3 points of the final ones at every ratio"
judged on the paired (by seed) difference with its 95 % interval. Resumable: each seed's dense
search (its snapshots go to ``--runs``, checksummed in the JSON) and each retrained ticket is
written atomically as it finishes, and a rerun with the same arguments does only what is
missing, each ratio's detected and final tickets first; a different config is refused
(``--fresh`` starts over). Seeds may run side by side, one process each (``--seeds 1`` and
``--seeds 2`` on two cores): each write merges into the results file under a lock.

    python benchmarks/eb_emergence.py                        # full: seeds 0,1,2
    python benchmarks/eb_emergence.py --budget short         # minutes, seed 0
    python benchmarks/eb_emergence.py --budget fullscale     # all 60k/10k images, 28 px: hours
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _emergence_report import markdown, plot, summarize  # noqa: E402
from _emergence_store import (  # noqa: E402
    FORMAT,
    load_snapshots,
    merge_and_write,
    open_results,
    save_snapshots,
    set_aside,
)
from _seed_stats import provenance  # noqa: E402
from _shared import RESULTS, SHORT_OVERRIDES  # noqa: E402
from eb_vs_baselines import budget_stem  # noqa: E402

from ebcompress.atomic import write_text_atomic  # noqa: E402
from ebcompress.channels.slim import slim  # noqa: E402
from ebcompress.channels.ticket import Ticket  # noqa: E402
from ebcompress.cost.flops import count_flops, training_flops  # noqa: E402
from ebcompress.data import DataSplit, load_data  # noqa: E402
from ebcompress.earlybird.detector import EarlyBird  # noqa: E402
from ebcompress.engine.stats import EpochStats  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.methods.base import RetrainPlan, chance_top1  # noqa: E402
from ebcompress.methods.data import data_options  # noqa: E402
from ebcompress.methods.eb_train import early_bird_for  # noqa: E402
from ebcompress.methods.training import build_trainer, retrain_schedule  # noqa: E402
from ebcompress.models import build_model  # noqa: E402
from ebcompress.recipe import Recipe, load_recipe  # noqa: E402

PAPER_DRAW_EPOCHS = (2, 5, 10, 20, 40)
EPSILONS = (0.05, 0.08, 0.1, 0.12, 0.15, 0.2)  # what-if thresholds, read off the recorded run
RATIOS = (0.3, 0.5, 0.7)
# The whole of Fashion-MNIST at its own size: 60,000 train / 10,000 test images, 28 px.
FULLSCALE_OVERRIDES = ("data.image_size=28", "data.train_subset=null", "data.test_subset=null")
BUDGETS: dict[str, dict[str, Any]] = {
    "full": {"overrides": (), "retrain_epochs": None, "seeds": (0, 1, 2)},
    "short": {"overrides": SHORT_OVERRIDES, "retrain_epochs": 5, "seeds": (0,)},
    "fullscale": {"overrides": FULLSCALE_OVERRIDES, "retrain_epochs": None, "seeds": (0, 1, 2)},
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
        # with the training metrics, as the pipeline's EB: no ticket before the net learned
        self.bird.end_of_epoch(epoch, stats)
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


def retrain_order(
    ratios: list[float], draws: list[int], emerged: dict[str, int | None]
) -> list[tuple[float, int]]:
    """Every (ratio, draw epoch) to retrain, those the target compares first: each ratio's
    detected ticket and its final one, then the rest of the curve. A session stopped halfway
    through a seed then leaves the verdict, not just the early draws, behind it."""
    final = max(draws)
    points = [(r, e) for r in ratios for e in sorted(set(draws) | ({emerged[f"{r:g}"]} - {None}))]
    judged = [(r, e) for r, e in points if e in (final, emerged[f"{r:g}"])]
    return judged + [p for p in points if p not in judged]


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


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` as distinct integers; anything else is a UserError."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give distinct integers separated by commas, e.g. 0,1,2")
    return seeds


class Session:
    """This invocation's part of the results file: what it adds, written atomically."""

    def __init__(self, path: Path, result: dict[str, Any], record: dict[str, Any]) -> None:
        self.path, self.result, self.record = path, result, record
        self.start = time.perf_counter()
        record["id"] = uuid.uuid4().hex
        result["sessions"].append(record)

    def write(self) -> None:
        self.record["wall_seconds"] = time.perf_counter() - self.start
        merge_and_write(self.path, self.result, self.record, _summarized)

    def start_seed(self, seed: int) -> dict[str, Any]:
        """Own ``seed`` from now on, starting from its run as the file has it now (a session
        beside this one may have added to it since this one opened the file)."""
        self.record.setdefault("active", [])
        self.write()
        self.record["active"].append(seed)
        return self.result["runs"].setdefault(str(seed), {"seed": seed, "points": []})

    def render(self) -> str:
        return render_page(self.path, self.result, self.record)


def _summarized(result: dict[str, Any]) -> None:
    result["summary"] = summarize(result)


def render_page(path: Path, result: dict[str, Any], record: dict[str, Any] | None) -> str:
    """The summary into the JSON, then the figure and the markdown beside it, all from the
    merged results and under the file's lock (a slower render never overwrites a newer)."""
    text: list[str] = []

    def page(merged: dict[str, Any]) -> None:
        _summarized(merged)
        stem = path.with_suffix("")
        png = plot(merged, stem.with_suffix(".png")).name
        text.append(markdown(merged, png))
        write_text_atomic(stem.with_suffix(".md"), text[0])

    merge_and_write(path, result, record, page)
    return text[0]


def run_seed(session: Session, args: argparse.Namespace, overrides: list[str], seed: int) -> None:
    """One seed: its dense search unless recorded, then every ticket not yet retrained."""
    result, config = session.result, session.result["config"]
    ratios, draws, retrain_epochs = (
        config["ratios"],
        config["draw_epochs"],
        config["retrain_epochs"],
    )
    run = session.start_seed(seed)
    recipe = load_recipe(args.recipe, [*overrides, f"seed={seed}"])
    folder = args.runs / f"seed{seed}"
    loaded: list[DataSplit] = []

    def data() -> DataSplit:  # loaded once, and only when something is left to train
        if not loaded:
            loaded.append(
                load_data(data_options(recipe.data), root=args.data_root, seed=recipe.seed)
            )
        return loaded[0]

    states = tickets = None
    earlier = None
    gone = not any((folder / name).is_file() for name in run.get("snapshots", {}))
    if "dense" in run and not run.get("finished") and gone:
        # another machine, without the first session's --runs: search this seed again; its
        # retrained tickets are kept if the dense run comes out the same (checked below)
        print(f"seed {seed}: its dense snapshots are not in {folder}; searching again", flush=True)
        earlier, run = run, {"seed": seed, "points": []}
        result["runs"][str(seed)] = run
    if "dense" not in run:
        machine = provenance(args.device)
        recorder, bird, dense = search(recipe, data(), ratios, draws, args.device)
        traces = {f"{r:g}": bird.history.window_max_distances(r) for r in ratios}
        run.update(
            provenance=machine,
            dense=dense,
            emerged_epochs={f"{r:g}": bird.emerged_epoch[r] for r in ratios},
            window_max_distances=traces,
            emergence_by_epsilon={r: emergence_by_epsilon(t) for r, t in traces.items()},
            snapshots=save_snapshots(folder, recorder.states, recorder.tickets),
        )
        states, tickets = recorder.states, recorder.tickets
        # the same dense run bit for bit: its snapshots' checksums agree
        if earlier is not None and earlier["snapshots"] == run["snapshots"]:
            run["points"] = earlier["points"]
        session.write()
        print(
            f"seed {seed}: dense {100 * dense['test_top1']:.2f} %, emergence "
            f"{run['emerged_epochs']}",
            flush=True,
        )
    if "chance_top1" not in run:  # recorded from this session on; the summary judges by it
        run["chance_top1"] = chance_top1(data())
        session.write()
    done = {(p["ratio"], p["draw_epoch"]) for p in run["points"]}
    for ratio, epoch in retrain_order(ratios, draws, run["emerged_epochs"]):
        if (ratio, epoch) not in done:
            if states is None:
                states, tickets = load_snapshots(folder, run["snapshots"])
            machine = provenance(args.device)
            point = retrain_ticket(
                recipe, data(), states[epoch], tickets[epoch][ratio], retrain_epochs, args.device
            )
            samples = len(data().train)
            flops = training_flops(run["dense"]["macs"], samples, epoch) + training_flops(
                point["macs"], samples, retrain_epochs
            )
            run["points"].append(
                {
                    "ratio": ratio,
                    "draw_epoch": epoch,
                    "emerged_here": epoch == run["emerged_epochs"][f"{ratio:g}"],
                    "dense_top1_at_draw": run["dense"]["test_top1_per_epoch"][epoch - 1],
                    "total_flops": flops,
                    **point,
                    "provenance": machine,
                }
            )
            session.write()
            print(
                f"seed {seed} p={ratio:g} drawn at epoch {epoch}: retrain top-1 "
                f"{100 * point['test_top1']:.2f} %",
                flush=True,
            )
    run["points"].sort(key=lambda p: (p["ratio"], p["draw_epoch"]))
    run["finished"] = True
    session.write()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion_mnist_vgg_p30")
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default: by budget)")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    parser.add_argument(
        "--draw-epochs", default=",".join(map(str, PAPER_DRAW_EPOCHS)), help="+ the final epoch"
    )
    parser.add_argument("--retrain-epochs", type=int, default=None, help="default: by budget")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None, help="<results>/<stem>.* (default: by budget)")
    parser.add_argument("--runs", type=Path, help="dense snapshots (default runs/bench_<stem>)")
    parser.add_argument("--fresh", action="store_true", help="ignore an earlier results file")
    # One thread by default: on this 2-core host two threads ran 1.5x faster when it was quiet
    # but 4x slower at load average 4 (other jobs), so a shared host gets the safe choice.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--report-only", action="store_true", help="redraw the page from the results file"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    stem = args.stem or budget_stem("eb_emergence", args.budget)
    args.runs = args.runs or Path("runs") / f"bench_{stem}"
    seeds = parse_seeds(args.seeds) if args.seeds else list(budget["seeds"])
    overrides = [*budget["overrides"], *args.overrides]
    recipe = load_recipe(args.recipe, overrides)
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    draws = draw_epochs_for(recipe.train.epochs, [int(e) for e in args.draw_epochs.split(",")])
    retrain_epochs = args.retrain_epochs or budget["retrain_epochs"] or recipe.train.epochs
    config = {
        "recipe": {k: v for k, v in recipe.to_dict().items() if k != "seed"},
        "ratios": ratios,
        "draw_epochs": draws,
        "retrain_epochs": retrain_epochs,
        "retrain_milestones": retrain_schedule(recipe.train, retrain_epochs).milestones,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{stem}.json"
    if args.report_only:  # beside running sessions too: their seeds as far as they got
        earlier = open_results(path, config, fresh=False)
        if earlier is None:
            raise UserError(f"{path}: no results to redraw; run without --report-only first")
        text = render_page(path, earlier, None)
        print(text)
        return earlier
    if args.fresh and (aside := set_aside(path)) is not None:
        print(f"--fresh: the earlier results are kept as {aside}", flush=True)
    machine = provenance(args.device)
    result = open_results(path, config, args.fresh) or {
        "benchmark": "eb_emergence",
        "format": FORMAT,
        "budget": args.budget,
        "machine": machine,  # the first session's; every record keeps its own
        "config": config,
        "recipe": recipe.to_dict(),  # seed: each run's own, under "runs"
        "seeds": [],
        "runs": {},
        "sessions": [],
        "wall_seconds": 0.0,
    }
    result["seeds"] += [s for s in seeds if s not in result["seeds"]]
    argv_now = sys.argv[1:] if argv is None else list(argv)
    session = Session(path, result, {"argv": argv_now, "seeds": seeds, "provenance": machine})
    session.write()  # a session killed in its first search still shows in the file
    for seed in seeds:
        run_seed(session, args, overrides, seed)
        text = session.render()
    print(text)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

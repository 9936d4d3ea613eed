"""The headline: EB Train against the baselines on the whole Fashion-MNIST, over seeds.

All 60,000 training and 10,000 test images at 28 px (recipe ``fashion_mnist_vgg_full``:
the narrow VGG-11, 20 epochs). EB and network slimming run at p = 0.3 / 0.5 / 0.7 under two
retraining protocols, each over ``--seeds``:

``paper``
    every ticket retrained on the full schedule again (You et al., ICLR 2020, Sec. 3.1:
    "for retraining the tickets, we keep the same setting"), the recipe as shipped;
``finetune``
    a short fine-tune of the ticket's inherited weights (``retrain.epochs`` =
    ``--finetune-epochs``, a restarted schedule of that length).

LT, SNIP and ThiNet run under the paper's protocol for ``--baseline-seeds``. Every job is
``ebcompress compare`` into ``<runs>/seed<k>/<protocol>``; the two protocols of a seed share
one ``shared/`` folder, so each search (one EB search for all ratios, one dense training per
baseline) is trained once per seed (:mod:`ebcompress.run.shared`).

Resumable at every level: a finished run is read back, an interrupted one resumes from its
checkpoints, and the results page is rebuilt after every job from the run folders and the
results JSON itself, so it accumulates seeds across sessions, and machines: a job whose runs
the results already hold is not run again even where its folders are gone.
``<runs>/jobs.jsonl`` records each job's machine, load average, versions and dates
(:func:`_seed_stats.provenance`). ``--report-only`` redraws the page from what is there.

    python benchmarks/headline.py                    # full: hours on a 2-core CPU
    python benchmarks/headline.py --budget short     # minutes, on 2,000 / 1,000 images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _headline_report import collect, done, markdown, plot  # noqa: E402
from _seed_stats import provenance  # noqa: E402
from _shared import RESULTS, write_results  # noqa: E402

from ebcompress.engine.metrics_file import append_entry, read_entries  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.recipe import Recipe, load_recipe  # noqa: E402
from ebcompress.run.compare import run_compare  # noqa: E402

RECIPE = "fashion_mnist_vgg_full"
RATIOS = (0.3, 0.5, 0.7)
CORE = ("eb", "ns")
BASELINES = ("lt", "snip", "thinet")
BUDGETS: dict[str, dict[str, Any]] = {
    "full": {"overrides": (), "seeds": "0,1,2", "finetune_epochs": 5},
    "short": {
        "overrides": (
            "data.train_subset=2000",
            "data.test_subset=1000",
            "train.epochs=6",
            "train.milestones=[3,5]",
            "retrain.epochs=6",
            "prune.window=3",
            "prune.max_search_epochs=5",
        ),
        "seeds": "0,1",
        "finetune_epochs": 2,
    },
}


def protocol_recipe(base: list[str], seed: int, protocol: str, finetune_epochs: int) -> Recipe:
    """The recipe of one (seed, protocol) job."""
    extra = [f"retrain.epochs={finetune_epochs}"] if protocol == "finetune" else []
    return load_recipe(RECIPE, [*base, f"seed={seed}", *extra])


def jobs(seeds: list[int], baseline_seeds: list[int], baselines: list[str]) -> list[tuple]:
    """(seed, protocol, methods) in the order they run: EB and NS seed by seed (both
    protocols), then each baseline as a job of its own (the results page is written after
    every job, so a session stopped inside the baselines keeps those it finished), so the
    paired EB-NS numbers arrive first."""
    order = [(s, p, list(CORE)) for s in seeds for p in ("paper", "finetune")]
    order += [(s, "paper", [*CORE, m]) for s in baseline_seeds for m in baselines]
    return order


def run_job(
    recipe: Recipe, runs: Path, seed: int, protocol: str, methods: list[str], args: Any
) -> None:
    """One compare, with its provenance before and after in ``jobs.jsonl``."""
    name = f"seed{seed}/{protocol}"
    log = runs / "jobs.jsonl"
    start = time.perf_counter()
    append_entry(log, {"job": name, "event": "start", "methods": methods, **provenance()})
    run_compare(
        recipe,
        runs / f"seed{seed}" / protocol,
        methods=methods,
        ratios=args.ratios,
        data_root=args.data_root,
        device=args.device,
        progress=not args.quiet,
        shared_dir=runs / f"seed{seed}" / "shared",
    )
    append_entry(
        log,
        {
            "job": name,
            "event": "finish",
            "methods": methods,
            "wall_seconds": time.perf_counter() - start,
            **provenance(),
        },
    )


def earlier_results(path: Path) -> dict[str, Any] | None:
    """The results JSON an earlier session wrote (None: none yet)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_page(args: Any, runs: Path, stem: str) -> dict[str, Any]:
    """Rebuild ``<results>/<stem>.{json,md,png}`` from the run folders and, for runs they no
    longer hold, the results an earlier session wrote."""
    earlier = earlier_results(args.results / f"{stem}.json")
    result = collect(runs, args.ratios, earlier)
    jobs = (earlier or {}).get("jobs", []) + read_entries(runs / "jobs.jsonl")
    unique = {(j["job"], j["event"], j["date"]): j for j in jobs}
    result.update(
        benchmark="headline",
        budget=args.budget,
        recipe=RECIPE,
        overrides=list(BUDGETS[args.budget]["overrides"]) + args.overrides,
        finetune_epochs=args.finetune_epochs,
        jobs=sorted(unique.values(), key=lambda j: j["date"]),
        runs=str(runs),
    )
    args.results.mkdir(parents=True, exist_ok=True)
    png = plot(result, args.results / f"{stem}.png")
    write_results(stem, result, markdown(result, png.name if png else None), args.results)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--seeds", default=None, help="EB and NS seeds (default: by budget)")
    parser.add_argument("--baseline-seeds", default="0")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="'' for none")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--runs", type=Path, default=None, help="default runs/bench_<stem>")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="redraw the page only")
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    args.ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    args.finetune_epochs = args.finetune_epochs or budget["finetune_epochs"]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stem = args.stem or ("headline" if args.budget == "full" else f"headline_{args.budget}")
    runs = args.runs or Path("runs") / f"bench_{stem}"
    base = [*budget["overrides"], *args.overrides]
    seeds = [int(s) for s in (args.seeds or budget["seeds"]).split(",") if s.strip()]
    baseline_seeds = [int(s) for s in args.baseline_seeds.split(",") if s.strip()]
    baselines = [m.strip() for m in args.baselines.split(",") if m.strip()]
    if not args.report_only:
        for seed, protocol, methods in jobs(seeds, baseline_seeds, baselines):
            earlier = earlier_results(args.results / f"{stem}.json")
            # the methods whose runs the results hold already (an earlier session's) are done
            methods = [m for m in methods if not done(earlier, seed, protocol, [m], args.ratios)]
            if not methods:
                continue
            recipe = protocol_recipe(base, seed, protocol, args.finetune_epochs)
            run_job(recipe, runs, seed, protocol, methods, args)
            write_page(args, runs, stem)  # after every job: an interrupted session keeps it
    result = write_page(args, runs, stem)
    print(f"wrote {args.results / stem}.md (.json, .png)")
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

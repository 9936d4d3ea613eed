"""Does distillation help a heavily pruned ticket? Retraining at p = 0.7 with and without
``retrain.distill`` (the run's own dense network as the teacher), over seeds.

Per seed, one ``ebcompress compare`` per protocol into ``<runs>/seed<k>/<protocol>``; both
protocols share ``<runs>/seed<k>/shared``, so each method's search is trained once and the
two retrainings start from the same ticket and weights: the paired difference is the
distillation's alone. The page gives each protocol's mean ± sd over seeds, the paired
difference with a Student-t 95 % interval, and the teacher's forward FLOPs the ledger
charged. Resumable: compare keeps finished runs.

    python benchmarks/distill_gain.py                        # quickstart (digits), 5 seeds
    python benchmarks/distill_gain.py --recipe fashion_mnist_vgg_p30 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _seed_stats import mean_sd, paired_difference, provenance  # noqa: E402
from _shared import RESULTS, write_results  # noqa: E402

from ebcompress.recipe import load_recipe  # noqa: E402
from ebcompress.run.compare import run_compare  # noqa: E402
from ebcompress.run.state import read_state  # noqa: E402

PROTOCOLS = ("plain", "distill")


def protocol_overrides(protocol: str, alpha: float, temperature: float) -> list[str]:
    """The ``--set`` lines of one protocol (plain: the recipe as shipped)."""
    if protocol == "plain":
        return []
    return [f"retrain.distill.alpha={alpha}", f"retrain.distill.temperature={temperature}"]


def row_of(run_dir: Path) -> dict[str, Any]:
    """A finished run's accuracy and its retrain phase's cost (teacher part apart)."""
    results = read_state(run_dir).results
    retrain = results.cost.ledger.phases["retrain"]
    return {
        "test_top1": results.accuracy.test_top1,
        "total_flops": results.cost.ledger.total_flops,
        "retrain_flops": retrain.training_flops,
        "teacher_flops": retrain.teacher_flops,
        "retrain_seconds": retrain.seconds,
        "ticket_epoch": results.ticket.epoch,
    }


def summarise(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: each protocol's mean/sd top-1 and the paired distill - plain difference."""
    out: dict[str, Any] = {}
    for method in methods:
        by = {
            p: {
                r["seed"]: r["test_top1"]
                for r in rows
                if r["method"] == method and r["protocol"] == p
            }
            for p in PROTOCOLS
        }
        if not all(by.values()):
            continue
        cost = [r for r in rows if r["method"] == method and r["protocol"] == "distill"]
        out[method] = {
            **{
                p: dict(zip(("mean", "sd"), mean_sd(v.values()), strict=True))
                for p, v in by.items()
            },
            "difference": paired_difference(by["distill"], by["plain"]),
            "teacher_share_of_retrain_flops": sum(r["teacher_flops"] for r in cost)
            / max(sum(r["retrain_flops"] for r in cost), 1),
        }
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Distillation at p = {result['ratio']:g}: {result['recipe']}",
        "",
        f"Measured {m['date']} on {m['platform']} ({m['cpu_count']} CPUs, "
        f"{m['torch_threads']} torch threads, load average {m['load_average'][0]:.1f} at the "
        f"start), torch {m['versions']['torch']}, commit {str(m.get('git_commit'))[:10]}.",
        "",
        f"Teacher: the run's own dense network (EB: at the ticket's epoch; NS: the trained one); "
        f"alpha {result['alpha']}, temperature {result['temperature']}. Both protocols of a "
        "seed retrain the same ticket from the same weights (shared searches).",
        "",
        "| method | seeds | top-1 plain (mean ± sd) | top-1 distilled | distilled − plain "
        "(95 % CI) | teacher share of retrain FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for method, s in result["summary"].items():
        d = s["difference"]
        ci = "n/a" if d["ci"] is None else f"[{_pct(d['ci'][0])}, {_pct(d['ci'][1])}]"
        lines.append(
            f"| {method} | {d['n']} | {_pct(s['plain']['mean'])} ± {_pct(s['plain']['sd'])} | "
            f"{_pct(s['distill']['mean'])} ± {_pct(s['distill']['sd'])} | "
            f"{_pct(d['mean'])} {ci} | {100 * s['teacher_share_of_retrain_flops']:.0f} % |"
        )
    lines += [
        "",
        "Per run (top-1 %):",
        "",
        "| method | seed | plain | distilled |",
        "|---|---|---|---|",
    ]
    for method in result["summary"]:
        for seed in sorted({r["seed"] for r in result["rows"] if r["method"] == method}):
            pair = {
                r["protocol"]: r["test_top1"]
                for r in result["rows"]
                if r["method"] == method and r["seed"] == seed
            }
            lines.append(
                f"| {method} | {seed} | {_pct(pair.get('plain'))} | {_pct(pair.get('distill'))} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--methods", default="eb,ns")
    parser.add_argument("--ratio", type=float, default=0.7)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--runs", type=Path, default=None, help="default runs/bench_<stem>")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stem = args.stem or f"distill_gain_{args.recipe}"
    runs = args.runs or Path("runs") / f"bench_{stem}"
    methods = [m for m in args.methods.split(",") if m]
    machine, rows = provenance(), []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        for protocol in PROTOCOLS:
            extra = protocol_overrides(protocol, args.alpha, args.temperature)
            recipe = load_recipe(args.recipe, [*args.overrides, f"seed={seed}", *extra])
            out = runs / f"seed{seed}" / protocol
            compared = run_compare(
                recipe,
                out,
                methods=methods,
                ratios=[args.ratio],
                progress=False,
                shared_dir=runs / f"seed{seed}" / "shared",
            )
            for row in compared["rows"]:
                rows.append(
                    {"seed": seed, "protocol": protocol, "method": row["method"]}
                    | row_of(out / row["run_dir"])
                )
        result = {
            "benchmark": "distill_gain",
            "machine": machine,
            "recipe": args.recipe,
            "overrides": args.overrides,
            "ratio": args.ratio,
            "alpha": args.alpha,
            "temperature": args.temperature,
            "rows": rows,
            "summary": summarise(rows, methods),
        }
        # after every seed: an interrupted run keeps what it measured (and resumes from runs/)
        write_results(stem, result, markdown(result), args.results)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()

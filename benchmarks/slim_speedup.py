"""Does a slim network run as much faster as its MAC count says? Dense vs slim, side by side.

For timm ``resnet50``, ``vgg16_cifar`` and ``mobilenetv2_100``, at pruning ratios 0.3 / 0.5 /
0.7 (with and without ``round_to=8``), on the CPU, at batch 1 and 32, in eager PyTorch and in
onnxruntime: the median latency of the dense and the slim model, measured interleaved in one
run (:func:`ebcompress.deploy.bench.bench_models`). Target: at batch 32 the latency speedup reaches
>= 80 % of the MAC reduction.

Tickets are drawn from random initialisation with spread-out BN scales
(``_shared.randomize_batchnorm``), which prunes every layer by about the same fraction; a
trained network's ticket prunes some layers harder. Inputs are small (64 px for the ImageNet
models, 32 px for the CIFAR VGG) so that the default run stays within ~10 minutes on 2 cores;
latency ratios at small inputs are pessimistic for the slim model, whose fixed per-layer
overheads weigh more. Writes ``results/slim_speedup.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import machine_line, randomize_batchnorm, write_results  # noqa: E402

from ebcompress.channels.graph import ChannelGraph  # noqa: E402
from ebcompress.channels.slim import slim  # noqa: E402
from ebcompress.channels.ticket import Ticket  # noqa: E402
from ebcompress.deploy.bench import BenchResult, bench_models, machine_info  # noqa: E402
from ebcompress.models import build_model  # noqa: E402

# (model name, input side): CIFAR nets at their native 32 px, ImageNet nets at a small 64 px.
MODELS = {"timm:resnet50": 64, "vgg16_cifar": 32, "mobilenetv2_100": 64}
TARGET = 0.8  # speedup / MAC reduction at the largest batch
ALIGN = 8  # SIMD-friendly width multiple that round_to is tried with


def _parse_round_to(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _rows(name: str, side: int, ticket: Ticket, result: BenchResult) -> list[dict[str, Any]]:
    """One row per batch size, with the ticket's shape next to the timings."""
    base = {
        "model": name,
        "input": side,
        "ratio": ticket.ratio,
        "round_to": ticket.extra.get("round_to"),
        "achieved_ratio": ticket.pruned_fraction,
        "groups": len(ticket.kept),
        "groups_not_multiple_of_8": sum(len(k) % ALIGN != 0 for k in ticket.kept.values()),
        "runtime": result.runtime,
        "mac_reduction": result.mac_reduction,
        "param_reduction": result.dense_params / result.slim_params,
    }
    return [
        {**base, **t.to_dict(), "efficiency": t.speedup / result.mac_reduction}
        for t in result.timings
    ]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in args.models:
        side = MODELS.get(name, args.size)
        size = (3, side, side)
        dense = randomize_batchnorm(build_model(name, num_classes=args.num_classes).eval())
        example = torch.randn(2, *size)
        graph = ChannelGraph(dense, example)
        for ratio, round_to in itertools.product(args.ratios, args.round_to):
            ticket = graph.draw(ratio, round_to=round_to)
            slim_model = slim(dense, ticket, example).eval()
            for runtime in args.runtimes:
                result = bench_models(
                    dense, slim_model, size, batch_sizes=args.batch_sizes, runtime=runtime,
                    warmup=args.warmup, repeats=args.repeats,
                )  # fmt: skip
                for r in _rows(name, side, ticket, result):
                    rows.append(r)
                    print(
                        f"{name} p={ratio} round_to={round_to} {runtime} "
                        f"batch {r['batch_size']}: {r['dense_ms']:.2f} -> {r['slim_ms']:.2f} ms, "
                        f"speedup {r['speedup']:.2f}x vs MACs {r['mac_reduction']:.2f}x "
                        f"({100 * r['efficiency']:.0f} %)",
                        flush=True,
                    )
    return rows


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    big = max(args.batch_sizes)
    at_big = [r for r in rows if r["batch_size"] == big]
    met = [r for r in at_big if r["efficiency"] >= TARGET]
    lines = [
        "# Slim vs dense latency (CPU)",
        "",
        machine_line(machine),
        f"Median of {args.repeats} interleaved repeats after {args.warmup} warm-up calls; "
        "speedup = dense latency / slim latency; MAC reduction = dense MACs / slim MACs; "
        f"efficiency = speedup / MAC reduction (target >= {TARGET:.0%} at batch {big}).",
        "",
        f"At batch {big}: {len(met)} of {len(at_big)} configurations reach the target.",
        "",
        "| model | px | p | round_to | runtime | batch | dense ms | slim ms | speedup | MACs | "
        "efficiency | widths % 8 != 0 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = " **below**" if r["batch_size"] == big and r["efficiency"] < TARGET else ""
        lines.append(
            f"| {r['model']} | {r['input']} | {r['ratio']} | {r['round_to'] or '-'} | "
            f"{r['runtime']} | {r['batch_size']} | {r['dense_ms']:.2f} | {r['slim_ms']:.2f} | "
            f"{r['speedup']:.2f}x | {r['mac_reduction']:.2f}x | {100 * r['efficiency']:.0f} %"
            f"{flag} | {r['groups_not_multiple_of_8']}/{r['groups']} |"
        )
    below = [r for r in at_big if r["efficiency"] < TARGET]
    if below:
        lines += ["", f"Below the target at batch {big}, and what the same run says about why:", ""]
        lines += [f"- {_label(r)}: {100 * r['efficiency']:.0f} %; {_why(r, at_big)}" for r in below]
    return "\n".join(lines) + "\n"


def _label(row: dict[str, Any]) -> str:
    return f"{row['model']} p={row['ratio']} round_to={row['round_to']} {row['runtime']}"


def _why(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The sibling configuration that meets the target, if any, names the cause."""

    def sibling(**change: Any) -> dict[str, Any] | None:
        keys = ("model", "ratio", "round_to", "runtime")
        want = {k: change.get(k, row[k]) for k in keys}
        return next((r for r in rows if all(r[k] == want[k] for k in keys)), None)

    aligned = sibling(round_to=ALIGN)
    if row["round_to"] is None and aligned and aligned["efficiency"] >= TARGET:
        return (
            f"{row['groups_not_multiple_of_8']}/{row['groups']} widths are not multiples of "
            f"{ALIGN}; round_to={ALIGN} reaches {100 * aligned['efficiency']:.0f} %"
        )
    other = sibling(runtime="onnxruntime")
    if row["runtime"] == "torch" and other and other["efficiency"] >= TARGET:
        return f"eager overhead; onnxruntime reaches {100 * other['efficiency']:.0f} % here"
    return (
        "the slim layers are narrow, so per-layer overheads and memory-bound work that MACs do "
        "not count (BN, activations, additions, depthwise convolutions) weigh more"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument(
        "--round-to", nargs="+", type=_parse_round_to, default=[None, ALIGN],
        help="round_to values to draw tickets with ('none' = no rounding)",
    )  # fmt: skip
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--size", type=int, default=64, help="input side for models not listed")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--stem", default="slim_speedup", help="results/<stem>.{json,md}")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    machine = machine_info()
    rows = run(args)
    text = markdown(rows, machine, args)
    data = {"machine": machine, "args": vars(args), "target": TARGET, "rows": rows}
    json_path, md_path = write_results(args.stem, data, text)
    print(text)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()

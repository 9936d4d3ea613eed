"""How long do drawing a ticket and slimming take? Targets: < 20 ms per draw, < 2 s per slim.

For timm ``resnet50`` (1000 classes) on the CPU:

(a) one Early-Bird detection step, as ``EarlyBird`` runs it after every epoch on an already
    traced :class:`~ebcompress.channels.graph.ChannelGraph`: ``importance()`` + ``draw(ratio)`` +
    ``mask_distance`` to the previous ticket (median of ``--repeats`` calls);
(b) ``slim(model, ticket, example_inputs)``: deep copy, tracing, pruning, verification
    forward (median of ``--slim-repeats`` calls), next to building the ChannelGraph once.

BN scales are randomised (``_shared.randomize_batchnorm``) so the ticket is spread over all
layers. Writes ``results/slim_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import machine_line, randomize_batchnorm, write_results  # noqa: E402

from ebcompress.channels.graph import ChannelGraph  # noqa: E402
from ebcompress.channels.slim import slim  # noqa: E402
from ebcompress.channels.ticket import mask_distance  # noqa: E402
from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.models import build_model  # noqa: E402

DRAW_TARGET_S = 0.020
SLIM_TARGET_S = 2.0


def timings(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) seconds per call: on a shared machine the min shows the cost without
    the waits for a busy core, the median what a run there sees."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = randomize_batchnorm(build_model(args.model, num_classes=1000)).eval()
    example = torch.randn(1, 3, args.size, args.size)
    start = time.perf_counter()
    graph = ChannelGraph(model, example)
    graph_s = time.perf_counter() - start
    previous = graph.draw(args.ratio)

    def detection_step() -> float:
        graph.importance()
        return mask_distance(previous, graph.draw(args.ratio))

    detection_step()  # warm-up
    draw_s, draw_min_s = timings(detection_step, args.repeats)
    slim_s, slim_min_s = timings(lambda: slim(model, previous, example), args.slim_repeats)
    return {
        "model": args.model,
        "input": [1, 3, args.size, args.size],
        "ratio": args.ratio,
        "groups": len(graph.groups),
        "channels": sum(graph.widths.values()),
        "channel_graph_s": graph_s,
        "detection_step_s": draw_s,
        "detection_step_min_s": draw_min_s,
        "slim_s": slim_s,
        "slim_min_s": slim_min_s,
        "detection_target_s": DRAW_TARGET_S,
        "slim_target_s": SLIM_TARGET_S,
        "detection_ok": draw_s < DRAW_TARGET_S,
        "slim_ok": slim_s < SLIM_TARGET_S,
    }


def markdown(result: dict[str, Any], machine: dict[str, Any]) -> str:
    ok = {True: "yes", False: "NO"}
    return "\n".join(
        [
            "# Ticket drawing and slimming time",
            "",
            machine_line(machine),
            "",
            f"{result['model']}, input {'x'.join(map(str, result['input']))}, ratio "
            f"{result['ratio']}: {result['groups']} channel groups, {result['channels']} channels.",
            "",
            "| step | median | min | target | median met |",
            "|---|---|---|---|---|",
            f"| ChannelGraph (trace once) | {result['channel_graph_s']:.2f} s | | | |",
            f"| importance + draw + mask_distance | {1e3 * result['detection_step_s']:.1f} ms "
            f"| {1e3 * result['detection_step_min_s']:.1f} ms "
            f"| < {1e3 * DRAW_TARGET_S:.0f} ms | {ok[result['detection_ok']]} |",
            f"| slim (copy, trace, prune, verify) | {result['slim_s']:.2f} s "
            f"| {result['slim_min_s']:.2f} s | < {SLIM_TARGET_S:.0f} s | {ok[result['slim_ok']]} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="timm:resnet50")
    parser.add_argument("--size", type=int, default=224, help="example input side")
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--slim-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--stem", default="slim_time", help="results/<stem>.{json,md}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    machine = machine_info()
    json_path, md_path = write_results(
        args.stem, {"machine": machine, "result": result}, markdown(result, machine)
    )
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()

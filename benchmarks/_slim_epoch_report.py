"""The markdown page of ``slim_epoch_speed.py``: the timing table, the target's verdict, where
a step's time goes, what compiling pays back, and the engine check."""

from __future__ import annotations

import argparse
from typing import Any

from _shared import machine_line

TARGET = 0.9  # speedup / MAC reduction at p = 0.5
TARGET_RATIO = 0.5
SIDE = 28
SLIM = f"p={TARGET_RATIO}"


def find(rows: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    """The first row whose fields equal ``want``."""
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def _verdict(efficiency: float) -> str:
    return "met" if efficiency >= TARGET else "**MISSED**"


def timing_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| p | lever | conv widths | step ms | CPU ms | epoch s | speedup | CPU speedup | "
        "vs plain | MACs | efficiency | CPU efficiency |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = "dense" if r["ratio"] is None else r["ratio"]
        verdict = f" {_verdict(r['efficiency'])}" if r["ratio"] == TARGET_RATIO else ""
        widths = "-" if r["ratio"] is None else " ".join(map(str, r["widths"]))
        efficiency = (
            "- | -"
            if r["ratio"] is None
            else f"{100 * r['efficiency']:.0f} %{verdict} | {100 * r['cpu_efficiency']:.0f} %"
        )
        lines.append(
            f"| {p} | {r['lever']} | {widths} | {r['step_ms']:.1f} | {r['cpu_step_ms']:.1f} | "
            f"{r['epoch_s']:.1f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
            f"{r['speedup_vs_plain_dense']:.2f}x | {r['mac_reduction']:.2f}x | {efficiency} |"
        )
    return lines


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    at_target = [r for r in rows if r["ratio"] == TARGET_RATIO]
    plain = find(at_target, lever="plain")
    if plain is None:
        return []
    best = max(at_target, key=lambda r: r["efficiency"])
    fastest = max(at_target, key=lambda r: r["speedup_vs_plain_dense"])
    return [
        "",
        f"**Target at p = {TARGET_RATIO}** (per-epoch speedup >= {TARGET:.0%} of the MAC "
        f"reduction): {_verdict(plain['efficiency'])} by the plain slim net "
        f"({plain['speedup']:.2f}x for {plain['mac_reduction']:.2f}x fewer MACs: "
        f"{100 * plain['efficiency']:.0f} %); the most efficient lever is {best['lever']} "
        f"({100 * best['efficiency']:.0f} %, {_verdict(best['efficiency'])}); the fastest epoch "
        f"is {fastest['lever']} ({fastest['epoch_s']:.1f} s, "
        f"{fastest['speedup_vs_plain_dense']:.2f}x faster than the plain dense epoch).",
    ]


# where each lever lives in a recipe (None: no recipe field sets it)
RECIPE_FIELDS = {
    "round_to": "`prune.round_to`",
    "channels_last": "`train.channels_last` (both phases)",
    "batch": None,
    "compile": None,
}


def lever_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Each lever's effect on the p = 0.5 slim epoch itself, against the plain slim epoch."""
    at_target = [r for r in rows if r["ratio"] == TARGET_RATIO]
    plain = find(at_target, lever="plain")
    if plain is None:
        return []
    effects = []
    for r in sorted(at_target, key=lambda r: r["epoch_s"]):
        if r is not plain:
            gain = 100 * (plain["epoch_s"] / r["epoch_s"] - 1)
            effects.append(f"{r['lever']} {r['epoch_s']:.1f} s ({gain:+.0f} %)")
    fields = ", ".join(
        f"{lever}: {where or 'no recipe field'}" for lever, where in RECIPE_FIELDS.items()
    )
    return [
        "",
        f"The p = {TARGET_RATIO} slim epoch, plain {plain['epoch_s']:.1f} s, with each lever "
        f"(fastest first; + = faster): {'; '.join(effects)}. Recipe fields: {fields}.",
    ]


def profile_lines(profile: dict[str, dict[str, float]], rows: list[dict[str, Any]]) -> list[str]:
    """Where the step's time goes, dense vs p = 0.5 (contiguous and channels-last), and the
    speedup the step would have if only its convolutions followed the MAC count."""
    pairs = [(f"dense{s}", f"{SLIM}{s}") for s in ("", " channels_last")]
    pairs = [(d, p) for d, p in pairs if d in profile and p in profile]
    if not pairs:
        return []
    head = " | ".join(f"{d} ms | share | {p} ms | speedup" for d, p in pairs)
    lines = [
        "",
        "Where a step's time goes (torch.profiler, self CPU ms per step over 10 steps):",
        "",
        f"| op | {head} |",
        "|---|" + "---:|" * (4 * len(pairs)),
    ]
    for kind in [*profile[pairs[0][0]], "all"]:
        cells = []
        for d, p in pairs:
            dense, slim = profile[d], profile[p]
            dense_ms = sum(dense.values()) if kind == "all" else dense[kind]
            slim_ms = sum(slim.values()) if kind == "all" else slim[kind]
            share = 100 * dense_ms / sum(dense.values())
            ratio = f"{dense_ms / slim_ms:.2f}x" if slim_ms else "-"
            cells.append(f"{dense_ms:.1f} | {share:.0f} % | {slim_ms:.1f} | {ratio}")
        lines.append(f"| {kind} | {' | '.join(cells)} |")
    plain = find(rows, ratio=TARGET_RATIO, lever="plain")
    dense, slim = profile.get("dense"), profile.get(SLIM)
    if plain is not None and dense and slim:
        # Convolutions sped up by the full MAC reduction, everything else as measured: the
        # most the non-convolution work leaves reachable without changing it.
        bound = sum(dense.values()) / (
            dense["conv"] / plain["mac_reduction"] + sum(slim.values()) - slim["conv"]
        )
        lines += [
            "",
            "Had the convolutions sped up by the full MAC reduction "
            f"({plain['mac_reduction']:.2f}x) and everything else as measured, the plain "
            f"p = {TARGET_RATIO} step would be "
            f"{bound:.2f}x faster: efficiency {100 * bound / plain['mac_reduction']:.0f} %. "
            "Batch norm, ReLU and max-pooling work grows with the width, not with its square as "
            "a convolution's MACs do, and fvcore counts them as a few ops per element.",
        ]
    return lines


def compile_lines(rows: list[dict[str, Any]]) -> list[str]:
    """For each compiled row: its compile time against the seconds it saves per epoch."""
    lines = []
    for r in (r for r in rows if r["compile"]):
        eager = find(rows, ratio=r["ratio"], lever="plain")
        if eager is None:
            continue
        saved = eager["epoch_s"] - r["epoch_s"]
        name = "dense" if r["ratio"] is None else f"p={r['ratio']}"
        pays = (
            f"pays off after {r['compile_s'] / saved:.1f} epochs of {r['epoch_steps']} steps"
            if saved > 0
            else "never pays off (the compiled step is not faster)"
        )
        lines.append(
            f"- torch.compile, {name}: {r['compile_s']:.1f} s to compile (the first two steps, "
            "cold cache); "
            f"{eager['step_ms']:.1f} -> {r['step_ms']:.1f} ms/step, {saved:+.1f} s per epoch; "
            f"{pays}."
        )
    return ["", *lines] if lines else []


def engine_lines(engine: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    if not engine:
        return []
    lines = [
        "",
        "Engine check: real epochs through `build_trainer` (data loader, augmentation, "
        f"metrics, evaluation on a test set 1/6 the size) of {engine[0]['steps']} batches of "
        "128: the second epoch of each fit, median of 3 fits; each slim net's whole epoch "
        "against the dense net's with the same `train.channels_last`:",
        "",
        "| p | lever | training pass s | whole epoch s | CPU s | steps as timed above s | "
        "epoch speedup |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for e in engine:
        step = find(rows, ratio=e["ratio"], lever=e["lever"])
        estimate = f"{step['step_ms'] * e['steps'] / 1e3:.2f}" if step else "-"
        dense = find(engine, ratio=None, channels_last=e["channels_last"])
        speedup = f"{dense['epoch_s'] / e['epoch_s']:.2f}x" if dense else "-"
        p = "dense" if e["ratio"] is None else e["ratio"]
        lines.append(
            f"| {p} | {e['lever']} | {e['train_s']:.2f} | {e['epoch_s']:.2f} | "
            f"{e['epoch_cpu_s']:.2f} | {estimate} | {speedup} |"
        )
    return lines


def markdown(result: dict[str, Any], machine: dict[str, Any], args: argparse.Namespace) -> str:
    """The whole page."""
    rows = result["rows"]
    source = (
        f"{args.ticket_steps} steps of the recipe's BN-L1 training on the real images"
        if args.ticket_steps
        else "BN-randomised scales (`_shared.randomize_batchnorm`)"
    )
    lines = [
        "# Slim vs dense training epochs (CPU)",
        "",
        machine_line(machine),
        "",
        f"vgg11_cifar (width 0.25), Fashion-MNIST {SIDE} px, SGD as fashion_mnist_vgg_p30; "
        f"tickets from {source}, uncapped. Training steps (forward + backward + SGD step on real "
        f"batches) timed interleaved in one process: median of {args.rounds} rounds of "
        f"{args.block} steps after 3 warm-up steps; CPU = this process's CPU time (what other "
        "jobs on the host took is left out). Epoch = ceil(60000 / batch) steps. speedup = the "
        "per-sample step time of the dense net with the row's memory format and compile at "
        "batch 128 / the row's (a larger batch or a round_to would change the retraining only); "
        "'vs plain' divides the plain dense net's (batch 128, eager, contiguous); "
        f"efficiency = speedup / MAC reduction; target >= {TARGET:.0%} at p = {TARGET_RATIO}.",
        "",
        *timing_table(rows),
        *target_lines(rows),
        *lever_lines(rows),
        *profile_lines(result["profile"], rows),
        *compile_lines(rows),
        *engine_lines(result["engine"], rows),
    ]
    return "\n".join(lines) + "\n"

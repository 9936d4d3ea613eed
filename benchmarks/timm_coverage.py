"""How much of timm goes through ebcompress: ticket, slim, exactness, forward, ONNX.

For each selected timm model, from random initialisation (BN scales spread out, see
``_shared.randomize_batchnorm``) at a small input size, in eval mode:

1. ``dense``   - build it and run a batch (not ebcompress: a failure here is reported apart);
2. ``ticket``  - ``draw_ticket(model, 0.3)``;
3. ``slim``    - ``slim(model, ticket)``;
4. ``exact``   - ``|slim(x) - masked_equivalent(x)| <= 1e-4`` (scaled by the output magnitude);
5. ``forward`` - the slim model maps a batch of 2 to (2, num_classes);
6. ``onnx``    - ``export(format="onnx")``, verified with onnxruntime (batch 2 and 1).

It records success or the failing step with its error and writes
``results/timm_coverage.{json,md}``. The target is >= 90 % of the architectures that contain
BatchNorm; torch-pruning's last published all-of-timm prunability was 119 of 294 (40.5 %).

By default one model per timm module (architecture family) is tried, the smallest-sounding
variant, skipping timm's ``test_*`` stand-ins. ``--per-family 0`` tries every model matching
``--filter``. Example: ``python benchmarks/timm_coverage.py --filter '*resnet*' --per-family 3``.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import has_batchnorm, machine_line, randomize_batchnorm, write_results  # noqa: E402

from ebcompress.channels.graph import draw_ticket  # noqa: E402
from ebcompress.channels.slim import masked_equivalent, slim  # noqa: E402
from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.deploy.formats import TOLERANCE, export  # noqa: E402

STEPS = ("dense", "ticket", "slim", "exact", "forward", "onnx")
RATIO = 0.3
LITTLE = 0.05  # a passing model that loses less than this share of its parameters
NUM_CLASSES = 10
# Size words in model names, smallest first: each family's cheapest-sounding member is tried.
_SIZE_RANKS = {
    **dict.fromkeys(("atto",), 0), **dict.fromkeys(("femto",), 1), **dict.fromkeys(("pico",), 2),
    **dict.fromkeys(("nano", "n"), 3), **dict.fromkeys(("tiny", "t", "xxs"), 4),
    **dict.fromkeys(("xs", "mini"), 5), **dict.fromkeys(("small", "s", "lite"), 6),
    **dict.fromkeys(("medium", "m", "base", "b"), 8), **dict.fromkeys(("large", "l"), 9),
    **dict.fromkeys(("xl", "xlarge", "huge", "h", "giant", "g"), 10),
}  # fmt: skip
_UNSIZED = 7
_PUBLISHED = "torch-pruning's last published all-of-timm prunability: 119 of 294 (40.5 %)"


class StepTimeout(BaseException):
    """The per-model budget ran out (a BaseException, so no `except Exception` swallows it)."""


def _size_key(name: str) -> tuple[int, int, int, str]:
    ranks = [_SIZE_RANKS[t] for t in re.split(r"[_\-.]", name) if t in _SIZE_RANKS]
    numbers = [int(n) for n in re.findall(r"\d+", name)]
    return (min(ranks, default=_UNSIZED), numbers[0] if numbers else 0, len(name), name)


def select_models(pattern: str, per_family: int) -> list[tuple[str, str]]:
    """(model, timm module) pairs: ``per_family`` smallest-sounding per module, 0 = all."""
    names = {n for n in timm.list_models(pattern) if not n.startswith("test_")}
    chosen = []
    for module in timm.list_modules():
        family = sorted(set(timm.list_models(module=module)) & names, key=_size_key)
        chosen += [(name, module) for name in family[: per_family if per_family > 0 else None]]
    return chosen


def _input_size(name: str, small: int) -> tuple[int, int, int]:
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return (3, small, small)
    if cfg.fixed_input_size:
        return tuple(cfg.input_size)
    side = max(small, *(cfg.min_input_size or (0, 0, 0))[1:])
    return (3, side, side)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _close(reference: torch.Tensor, other: torch.Tensor) -> float:
    """The largest difference in units of the tolerance (<= 1 passes)."""
    scale = max(1.0, float(reference.abs().max()))
    return float((reference - other).abs().max()) / (TOLERANCE * scale)


def try_model(name: str, family: str, small: int, budget: float, workdir: Path) -> dict[str, Any]:
    """Run the steps on one model; the record says how far it got and why it stopped."""
    record: dict[str, Any] = {"model": name, "family": family}
    step = "dense"
    start = time.perf_counter()

    def on_alarm(signum, frame):
        raise StepTimeout(f"over the {budget:g} s budget")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        size = _input_size(name, small)
        try:  # ViT-style models take a smaller image size; the others reject the argument
            model = timm.create_model(name, num_classes=NUM_CLASSES, img_size=size[1:])
        except TypeError:
            model = timm.create_model(name, num_classes=NUM_CLASSES)
        model.eval()
        randomize_batchnorm(model)
        record["has_bn"] = has_batchnorm(model)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, *size, generator=generator)
        with torch.no_grad():
            try:
                model(x)
            except Exception:
                size = tuple(timm.get_pretrained_cfg(name).input_size)  # too small for it
                x = torch.randn(2, *size, generator=generator)
                model(x)
        record["input_size"] = list(size)
        step = "ticket"
        ticket = draw_ticket(model, RATIO, example_inputs=x)
        record["groups"], record["pruned_fraction"] = len(ticket.kept), ticket.pruned_fraction
        record["dense_groups"] = len(ticket.kept_dense)
        step = "slim"
        slim_model = slim(model, ticket, x).eval()
        record["params_kept"] = _params(slim_model) / _params(model)
        step = "exact"
        masked = masked_equivalent(model, ticket, x).eval()
        with torch.no_grad():
            out, expected = slim_model(x), masked(x)
        record["exact_err"] = _close(expected, out)
        if not record["exact_err"] <= 1.0:
            raise AssertionError(f"slim differs from masked by {record['exact_err']:.3g} x tol")
        step = "forward"
        if tuple(out.shape) != (2, NUM_CLASSES):
            raise AssertionError(f"slim output shape {tuple(out.shape)}")
        step = "onnx"
        export(slim_model, workdir / "model.onnx", format="onnx", example_inputs=x)
        step = "done"
    except (Exception, StepTimeout) as exc:
        record["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    record["step"] = step  # the step that failed, or "done"
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def summarize(records: list[dict[str, Any]], args: argparse.Namespace) -> tuple[dict, str]:
    applicable = [r for r in records if r["step"] != "dense"]
    with_bn = [r for r in applicable if r.get("has_bn")]
    ok = [r for r in applicable if r["step"] == "done"]
    ok_bn = [r for r in with_bn if r["step"] == "done"]
    machine = machine_info()

    def rate(part: list, whole: list) -> str:
        return f"{len(part)} / {len(whole)} ({100 * len(part) / max(1, len(whole)):.1f} %)"

    failed_at = Counter(r["step"] for r in applicable if r["step"] != "done")
    # a model can pass with most of it kept dense; say how much each passing model shrank
    little = sorted(r["model"] for r in ok_bn if r.get("params_kept", 0) > 1 - LITTLE)
    kept = sorted(r["params_kept"] for r in ok_bn if "params_kept" in r)
    median_kept = kept[len(kept) // 2] if kept else float("nan")
    timeouts = sum(r.get("error", "").startswith("StepTimeout") for r in applicable)
    lines = [
        "# timm coverage: ticket -> slim -> exactness -> forward -> ONNX",
        "",
        machine_line(machine),
        f"timm {timm.__version__}; models matching {args.filter!r}, "
        f"{'all' if args.per_family <= 0 else args.per_family} per family, input {args.size}px "
        f"(larger where a model needs it), ratio {RATIO}, budget {args.budget:g} s per model.",
        "",
        "| | models | all steps pass |",
        "|---|---:|---:|",
        f"| with BatchNorm (target >= 90 %) | {len(with_bn)} | {rate(ok_bn, with_bn)} |",
        f"| all that build and run dense | {len(applicable)} | {rate(ok, applicable)} |",
        "",
        f"For reference, {_PUBLISHED}.",
        f"How much the passing BatchNorm models shrank at ratio {RATIO}: median "
        f"{100 * (1 - median_kept):.0f} % of parameters removed; {len(little)} of them lose under "
        f"{100 * LITTLE:.0f} % because most of their groups stay dense"
        + (f" ({', '.join(little)})" if little else "")
        + ". Each model's kept-dense group count and parameter share are in the JSON.",
        f"Not counted: {len(records) - len(applicable)} models whose dense forward failed "
        "(not an ebcompress step).",
        "",
        "Failures by step: "
        + (", ".join(f"{s} {failed_at[s]}" for s in STEPS if failed_at[s]) or "none")
        + f"; {timeouts} of them ran out of the time budget (rerun those with a larger --budget).",
        "",
        "| model | BN | failed step | error |",
        "|---|---|---|---|",
    ]
    for r in records:
        if r["step"] != "done":
            error = r.get("error", "").replace("|", "\\|")
            lines.append(
                f"| {r['model']} | {'yes' if r.get('has_bn') else 'no'} | {r['step']} | {error} |"
            )
    data = {
        "machine": machine,
        "timm": timm.__version__,
        "args": vars(args),
        "with_bn": len(with_bn),
        "with_bn_ok": len(ok_bn),
        "applicable": len(applicable),
        "applicable_ok": len(ok),
        "records": records,
    }
    return data, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filter", default="*", help="timm.list_models pattern")
    parser.add_argument("--per-family", type=int, default=1, help="models per timm module; 0 = all")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per model")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many models")
    parser.add_argument("--models", nargs="+", default=[], help="exactly these models instead")
    parser.add_argument("--stem", default="timm_coverage", help="results/<stem>.{json,md}")
    args = parser.parse_args()
    names = select_models(args.filter, args.per_family)
    if args.models:
        family = dict(select_models("*", 0))
        names = [(name, family.get(name, "")) for name in args.models]
    if args.limit > 0:
        names = names[: args.limit]
    warnings.simplefilter("ignore")
    records = []
    with tempfile.TemporaryDirectory(prefix="timm-coverage-") as tmp:
        for i, (name, family) in enumerate(names, 1):
            record = try_model(name, family, args.size, args.budget, Path(tmp))
            records.append(record)
            status = "ok" if record["step"] == "done" else f"FAIL at {record['step']}"
            print(f"[{i}/{len(names)}] {name}: {status} ({record['seconds']} s)", flush=True)
            # Rewritten after every model, so an interrupted run still leaves its results.
            json_path, md_path = write_results(args.stem, *summarize(records, args))
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()

"""Dense versus slim inference latency, measured side by side in one run.

Both models run in the same process on the same inputs, timed in alternating order (dense,
slim, then slim, dense, ...) so that a slow phase of a shared machine hits both; each timing is
a block of calls long enough for the clock, after warm-up calls; the median over repeats is
reported. Speedup is dense latency / slim latency; it is printed next to the MAC reduction
(dense MACs / slim MACs), the ratio an ideal runtime would reach.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn

from ebcompress.cost.flops import count_flops
from ebcompress.deploy.bundle import load, read_bundle
from ebcompress.deploy.formats import export
from ebcompress.errors import UserError

RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
# A timed block repeats the call until it lasts about this long, so the clock's resolution
# and per-call jitter stay small against the measurement.
MIN_BLOCK_SECONDS = 0.02


@dataclass(frozen=True)
class Timing:
    """Median seconds per forward pass of one batch, dense and slim."""

    batch_size: int
    dense_s: float
    slim_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.slim_s

    def to_dict(self) -> dict[str, float]:
        return {
            "batch_size": self.batch_size,
            "dense_ms": 1e3 * self.dense_s,
            "slim_ms": 1e3 * self.slim_s,
            "dense_images_per_s": self.batch_size / self.dense_s,
            "slim_images_per_s": self.batch_size / self.slim_s,
            "speedup": self.speedup,
        }


@dataclass(frozen=True)
class BenchResult:
    """Dense and slim latency per batch size, with the MAC and parameter counts."""

    runtime: str
    device: str
    input_size: tuple[int, int, int]
    dense_macs: int
    slim_macs: int
    dense_params: int
    slim_params: int
    timings: tuple[Timing, ...]
    repeats: int
    warmup: int
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def mac_reduction(self) -> float:
        """Dense MACs / slim MACs: the speedup an ideal runtime would reach."""
        return self.dense_macs / self.slim_macs

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "device": self.device,
            "input_size": list(self.input_size),
            "dense_macs": self.dense_macs,
            "slim_macs": self.slim_macs,
            "mac_reduction": self.mac_reduction,
            "dense_params": self.dense_params,
            "slim_params": self.slim_params,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "timings": [
                {**t.to_dict(), "speedup_over_mac_reduction": t.speedup / self.mac_reduction}
                for t in self.timings
            ],
            "machine": self.machine,
        }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on, and when."""
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # Other work on the machine is what makes CPU timings noisy; record how much there was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def time_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    warmup: int = 3,
    repeats: int = 10,
    sync: Callable[[], None] = lambda: None,
) -> list[float]:
    """Median seconds per call of each callable, timed in alternating order.

    Each callable is warmed up ``warmup`` times, then timed ``repeats`` times in blocks of
    calls lasting about :data:`MIN_BLOCK_SECONDS`; the order is reversed every repeat.
    ``sync`` waits for queued device work (``torch.cuda.synchronize`` on a GPU).
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"bench: repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    block_calls = []
    for call in calls:
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            call()
        sync()
        per_call = (time.perf_counter() - start) / max(1, warmup)
        block_calls.append(max(1, round(MIN_BLOCK_SECONDS / max(per_call, 1e-9))))
    samples: list[list[float]] = [[] for _ in calls]
    for repeat in range(repeats):
        order = range(len(calls)) if repeat % 2 == 0 else reversed(range(len(calls)))
        for index in order:
            call, n = calls[index], block_calls[index]
            sync()
            start = time.perf_counter()
            for _ in range(n):
                call()
            sync()
            samples[index].append((time.perf_counter() - start) / n)
    return [statistics.median(s) for s in samples]


def _torch_call(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        with torch.inference_mode():
            return model(batch)

    return call


def _onnx_call(path: Path, batch: torch.Tensor, device: str) -> Callable[[], object]:
    import onnxruntime as ort

    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise UserError(f"bench: onnxruntime has no {provider} here; use --device cpu")
    options = ort.SessionOptions()
    # The same thread count as torch, so that the two runtimes are compared on equal terms.
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=[provider])
    feed = {session.get_inputs()[0].name: batch.cpu().numpy()}
    return lambda: session.run(None, feed)


def bench_models(
    dense: nn.Module,
    slim: nn.Module,
    input_size: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    device: str = "cpu",
    runtime: str = "torch",
    warmup: int = 3,
    repeats: int = 10,
) -> BenchResult:
    """Time ``dense`` and ``slim`` side by side at each batch size (see the module docstring).

    With ``runtime="onnxruntime"`` both models are exported to verified ONNX files with a
    dynamic batch axis in a temporary folder first. The models are put in eval mode and moved
    to ``device``.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"bench: runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if device not in DEVICES:
        raise UserError(f"bench: device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("bench: --device cuda but no CUDA device is visible; use --device cpu")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise UserError(f"bench: batch sizes {list(batch_sizes)} must be positive integers")
    input_size = tuple(int(s) for s in input_size)
    models = [dense.eval().to(device), slim.eval().to(device)]
    counts = [count_flops(m, input_size) for m in models]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    timings = []
    with tempfile.TemporaryDirectory(prefix="ebcompress-bench-") as tmp:
        onnx_files = []
        if runtime == "onnxruntime":
            example = torch.randn(2, *input_size, generator=generator).to(device)
            onnx_files = [
                export(m, Path(tmp) / f"{name}.onnx", format="onnx", example_inputs=example)
                for m, name in zip(models, ("dense", "slim"), strict=True)
            ]
        for batch_size in batch_sizes:
            batch = torch.randn(int(batch_size), *input_size, generator=generator).to(device)
            if runtime == "torch":
                calls = [_torch_call(m, batch) for m in models]
            else:
                calls = [_onnx_call(f, batch, device) for f in onnx_files]
            dense_s, slim_s = time_interleaved(calls, warmup=warmup, repeats=repeats, sync=sync)
            timings.append(Timing(int(batch_size), dense_s, slim_s))
    return BenchResult(
        runtime=runtime,
        device=device,
        input_size=input_size,
        dense_macs=counts[0].macs,
        slim_macs=counts[1].macs,
        dense_params=counts[0].params,
        slim_params=counts[1].params,
        timings=tuple(timings),
        repeats=repeats,
        warmup=warmup,
        machine=machine_info(device),
    )


def bench_bundle(
    path: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    device: str = "cpu",
    runtime: str = "torch",
    warmup: int = 3,
    repeats: int = 10,
) -> BenchResult:
    """Bench a bundle (or run directory): the slim model against its dense architecture.

    The dense model is rebuilt from the bundle's spec with random weights (latency does not
    depend on the weight values).
    """
    _, spec, _ = read_bundle(path)
    dense: nn.Module = spec.build_dense()
    return bench_models(
        dense, load(path), spec.input_size, batch_sizes=batch_sizes, device=device,
        runtime=runtime, warmup=warmup, repeats=repeats,
    )  # fmt: skip


def bench_table(result: BenchResult, *, title: str | None = None) -> Table:
    """A rich table: one row per batch size, latency, throughput, speedup vs MAC reduction."""
    table = Table(
        title=title
        or f"dense vs slim, {result.runtime} on {result.device}, input {result.input_size}",
        caption=f"median of {result.repeats} interleaved repeats after {result.warmup} warm-up",
    )
    for header in ("batch", "dense ms", "slim ms", "dense img/s", "slim img/s", "speedup"):
        table.add_column(header, justify="right")
    table.add_column("MAC reduction", justify="right")
    table.add_column("speedup / MACs", justify="right")
    for t in result.timings:
        table.add_row(
            str(t.batch_size),
            f"{1e3 * t.dense_s:.2f}",
            f"{1e3 * t.slim_s:.2f}",
            f"{t.batch_size / t.dense_s:.1f}",
            f"{t.batch_size / t.slim_s:.1f}",
            f"{t.speedup:.2f}x",
            f"{result.mac_reduction:.2f}x",
            f"{100 * t.speedup / result.mac_reduction:.0f}%",
        )
    return table

"""``ebcompress export`` and ``ebcompress bench``: ship a slim model and measure what it gains."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ebcompress.atomic import write_text_atomic
from ebcompress.cli.app import app
from ebcompress.errors import UserError

SOURCE_HELP = "a run directory (runs/NAME) or a bundle folder (with config.json)"


@app.command("export")
def export_command(
    source: Path = typer.Argument(..., help=SOURCE_HELP),
    # The formats are registered with their writers (torch): the help cannot list them
    # without importing it, so an unknown name is what lists them.
    format: str = typer.Option(
        "bundle", "--format", "-f", help="an export format, e.g. onnx; an unknown one lists all"
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="output file (a folder for bundle); default: in the bundle"
    ),
    dynamic_batch: bool = typer.Option(
        True, "--dynamic-batch/--static-batch", help="free batch axis (onnx, pt2)"
    ),
    opset: int = typer.Option(17, min=9, help="ONNX opset version"),
) -> None:
    """Convert a run's model bundle to FORMAT and verify the file reproduces PyTorch."""
    from ebcompress.deploy.bundle import load, read_bundle
    from ebcompress.deploy.formats import default_path, export

    folder, spec, ticket = read_bundle(source)
    if format == "bundle" and out is None:
        raise UserError(f"{str(folder)!r} is already a bundle; give --out FOLDER to copy it")
    target = out if out is not None else default_path(folder, format)
    model = load(folder)
    export(
        model, target, format=format, spec=spec, ticket=ticket, opset=opset,
        dynamic_batch=dynamic_batch,
    )  # fmt: skip
    batch = "dynamic" if dynamic_batch else "static"
    print(f"wrote {target} ({format}, {batch} batch, outputs verified against PyTorch)")


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes):
        raise UserError(f"--batch-sizes {text!r} must be positive integers separated by commas")
    return sizes


@app.command()
def bench(
    source: Path = typer.Argument(..., help=SOURCE_HELP),
    batch_sizes: str = typer.Option("1,32", help="comma-separated batch sizes"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    runtime: str = typer.Option("torch", help="torch | onnxruntime"),
    repeats: int = typer.Option(10, min=1, help="timed repeats (the median is reported)"),
    warmup: int = typer.Option(3, min=0, help="untimed calls first"),
    threads: int = typer.Option(
        0, min=0, help="CPU threads for both runtimes (0: torch's default)"
    ),
    json_path: Path | None = typer.Option(None, "--json", help="also write the result as JSON"),
) -> None:
    """Dense vs slim latency and throughput side by side, next to the MAC reduction."""
    import torch

    from ebcompress.deploy.bench import bench_bundle, bench_table

    sizes = _batch_sizes(batch_sizes)
    if threads:
        torch.set_num_threads(threads)
    result = bench_bundle(
        source, batch_sizes=sizes, device=device, runtime=runtime, warmup=warmup,
        repeats=repeats,
    )  # fmt: skip
    Console().print(bench_table(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=1) + "\n")
        print(f"wrote {json_path}")

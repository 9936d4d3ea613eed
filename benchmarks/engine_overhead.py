"""Training throughput of ebcompress's Trainer against a plain hand-written PyTorch loop.

Same model, data, batch size, optimiser and device, measured in one run with the two loops
interleaved (alternating which goes first) after one untimed warm-up epoch of each. Both
time only the training pass of an epoch (the Trainer's ``EpochStats.seconds``: its
evaluation and checkpointing are outside). Target: the Trainer keeps >= 95 % of the plain
loop's images/s. Results are merged per device into
``benchmarks/results/engine_overhead.json`` and rendered to ``engine_overhead.md``.

    python benchmarks/engine_overhead.py --data digits --repeats 5
    python benchmarks/engine_overhead.py --device cuda --train-subset 20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ebcompress.data import load_data
from ebcompress.engine.optim import build_optimizer
from ebcompress.methods.data import data_options
from ebcompress.methods.training import build_trainer, optim_config
from ebcompress.models import build_model
from ebcompress.recipe import DataConfig, Recipe, TrainConfig

TARGET = 0.95
RESULTS = Path(__file__).resolve().parent / "results"


def plain_epoch(model: nn.Module, loader: DataLoader, cfg: TrainConfig, device) -> float:
    """images/s of the textbook loop: forward, loss, zero_grad, backward, step."""
    optimizer = build_optimizer(model, optim_config(cfg))
    model.train()
    samples = 0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += labels.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return samples / (time.perf_counter() - start)


def engine_epoch(model: nn.Module, data, recipe: Recipe, device) -> float:
    trainer = build_trainer(model, data, recipe, "bench", device=device, progress=False)
    (stats,) = trainer.fit()
    return stats.images_per_s


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measure(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    data_cfg = DataConfig(
        name=args.data, image_size=args.image_size, train_subset=args.train_subset, test_subset=64
    )
    data = load_data(data_options(data_cfg), seed=0)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.01, milestones=[])
    recipe = Recipe(data=data_cfg, train=cfg)
    kwargs = {"width_mult": args.width} if args.width else {}

    def fresh_model() -> nn.Module:
        torch.manual_seed(0)
        model = build_model(args.model, data.num_classes, data.in_chans, **kwargs)
        return model.to(device)

    plain_model, engine_model = fresh_model(), fresh_model()
    loader = DataLoader(
        data.train,
        batch_size=args.batch_size,
        shuffle=True,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    plain_epoch(plain_model, loader, cfg, device)  # warm-up: allocator, kernels, caches
    engine_epoch(engine_model, data, recipe, device)
    plain, engine = [], []
    for repeat in range(args.repeats):
        runs = [
            lambda: plain.append(plain_epoch(plain_model, loader, cfg, device)),
            lambda: engine.append(engine_epoch(engine_model, data, recipe, device)),
        ]
        for run in runs if repeat % 2 == 0 else runs[::-1]:
            run()
    # Each pair ran back to back, so its ratio cancels slow drifts in machine load.
    ratio = statistics.median(e / p for e, p in zip(engine, plain, strict=True))
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device),
        "setup": {
            "model": args.model,
            "width_mult": args.width,
            "data": args.data,
            "image_size": args.image_size,
            "train_samples": len(data.train),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "precision": "fp32",
        },
        "plain_images_per_s": plain,
        "engine_images_per_s": engine,
        "plain_median": statistics.median(plain),
        "engine_median": statistics.median(engine),
        "ratio": ratio,  # median over repeats of engine / plain
        "target": TARGET,
        "met": ratio >= TARGET,
    }


def render(runs: dict[str, dict]) -> str:
    lines = [
        "# Engine overhead: Trainer vs a plain PyTorch loop",
        "",
        "Training images/s, medians over interleaved epochs (evaluation excluded from both);",
        "ratio = median over repeats of Trainer / plain, each pair run back to back.",
        f"Target: Trainer >= {TARGET:.0%} of the plain loop.",
        "",
        "| run | machine | setup | plain img/s | Trainer img/s | ratio | pair ratios | target |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for label, run in runs.items():
        m, s = run["machine"], run["setup"]
        where = f"{m.get('gpu', m['processor'])}, {m['cpu_count']} CPUs, torch {m['torch']}"
        setup = (
            f"{s['model']} x{s['width_mult']} on {s['data']} {s['image_size']}px, "
            f"{s['train_samples']} samples, batch {s['batch_size']}, {s['repeats']} repeats"
        )
        verdict = "met" if run["met"] else "MISSED"
        engine, plain = run["engine_images_per_s"], run["plain_images_per_s"]
        pairs = [e / p for e, p in zip(engine, plain, strict=True)]
        lines.append(
            f"| {label} | {where} | {setup} | {run['plain_median']:,.0f} | "
            f"{run['engine_median']:,.0f} | {run['ratio']:.1%} | "
            f"{min(pairs):.0%}-{max(pairs):.0%} | {verdict} |"
        )
    lines += [
        "",
        "The pair-ratio range shows the noise of the machine: a shared CPU host moves both",
        "loops by tens of percent between epochs, far more than the Trainer's own overhead.",
        "",
        "Dates: " + ", ".join(f"{k} {v['date']}" for k, v in runs.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg11_cifar")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    result = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "engine_overhead.json"
    runs = json.loads(json_path.read_text())["runs"] if json_path.is_file() else {}
    runs[f"{torch.device(args.device).type} {args.model} x{args.width}"] = result
    json_path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    (args.out / "engine_overhead.md").write_text(render(runs))
    print(
        f"{args.device}: plain {result['plain_median']:,.0f} img/s, Trainer "
        f"{result['engine_median']:,.0f} img/s, ratio {result['ratio']:.1%} "
        f"({'met' if result['met'] else 'MISSED'} target {TARGET:.0%})"
    )


if __name__ == "__main__":
    main()

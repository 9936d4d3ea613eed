"""Does a slim network TRAIN as much faster as its MAC count says? Dense vs slim epochs.

The headline benchmark's network (``vgg11_cifar`` at ``width_mult: 0.25``) on Fashion-MNIST at
28 px (1 channel, 10 classes), trained as ``recipes/fashion_mnist_vgg_p30.yaml`` trains it (SGD
lr 0.05, momentum 0.9, weight decay 1e-4, batch 128): tickets at p = 0.3 / 0.5 / 0.7 are drawn
from the BN scales after ``--ticket-steps`` steps of BN-L1 training on the real images (about
where the headline's Early-Bird tickets emerge; 0 = BN-randomised, ``_shared``), uncapped as in
that recipe, and slimmed. Every configuration's training step (forward + backward + SGD step on
real batches) is timed in ONE process, in interleaved blocks of steps (order reversed every
round), median of the rounds; an epoch is ``ceil(60000 / batch)`` steps (469 at batch 128).

Per configuration: step time (wall, and this process's CPU time, which leaves out what other
jobs on a shared host took), per-epoch speedup over the dense net with the same memory format
and compile at batch 128 (:meth:`Config.dense`) and over the plain dense net (batch 128,
eager, contiguous); MAC reduction (fvcore, training mode); efficiency = speedup / MAC
reduction. Target: efficiency >= 0.9 at p = 0.5. The levers, one row each: ``round_to`` 4 / 8
/ 16, ``channels_last`` (alone and with ``round_to=8``), larger batches (per-sample time), all
three together, and ``torch.compile`` of the model (its compile time apart, with the epochs it
takes to pay off). A profile splits the step by kind of op, and an engine check trains one real
epoch through ``build_trainer`` on a subset, to show how much of an epoch lies outside the
steps. Writes ``results/slim_epoch_speed.{json,md}`` (``--budget short``: ``*_short``, about
a minute, BN-randomised tickets, no compile, no engine check).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import randomize_batchnorm, write_results  # noqa: E402
from _slim_epoch_report import SIDE, TARGET, TARGET_RATIO, markdown  # noqa: E402

from ebcompress.channels.graph import ChannelGraph  # noqa: E402
from ebcompress.channels.slim import slim  # noqa: E402
from ebcompress.cost.flops import count_flops  # noqa: E402
from ebcompress.data import load_data  # noqa: E402
from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.earlybird.sparsity import BNL1Regularizer  # noqa: E402
from ebcompress.methods.data import data_options  # noqa: E402
from ebcompress.methods.training import build_trainer  # noqa: E402
from ebcompress.models import build_model  # noqa: E402
from ebcompress.recipe import Recipe, load_recipe  # noqa: E402

EPOCH_SAMPLES = 60_000  # the full Fashion-MNIST training split
ALIGN = 8  # the round_to tried with channels_last
BUDGETS = {  # rounds x steps per block, ticket steps, engine-check steps, compile row
    "full": {"rounds": 10, "block": 5, "ticket_steps": 200, "engine_steps": 40, "compile": True},
    "short": {"rounds": 4, "block": 3, "ticket_steps": 0, "engine_steps": 0, "compile": False},
}


@dataclass(frozen=True)
class Config:
    """One timed configuration; ``ratio`` None is the dense net."""

    ratio: float | None = None
    round_to: int | None = None
    channels_last: bool = False
    compile: bool = False
    batch: int = 128

    def dense(self) -> Config:
        """The dense net a slim row is judged against: the same memory format and compile
        (``train.channels_last`` holds for both phases), at batch 128 (a larger batch would
        change the retraining only, as ``round_to`` changes only the slim net)."""
        return replace(self, ratio=None, round_to=None, batch=128)

    @property
    def lever(self) -> str:
        parts = [f"round_to={self.round_to}"] if self.round_to else []
        parts += ["channels_last"] * self.channels_last + ["compile"] * self.compile
        parts += [f"batch {self.batch}"] if self.batch != 128 else []
        return ", ".join(parts) or "plain"


def configs(ratios: list[float], args: argparse.Namespace) -> list[Config]:
    """The slim rows (plain, each round_to, channels_last alone and with round_to=8, each
    batch; at p = 0.5 also all three together and, costing a compilation per model,
    torch.compile), after the dense rows with the settings they are compared with."""
    rows = [Config(r, round_to=k) for r in ratios for k in (None, *args.round_to)]
    rows += [Config(r, round_to=k, channels_last=True) for r in ratios for k in (None, ALIGN)]
    rows += [Config(r, batch=b) for r in ratios for b in args.batches]
    if TARGET_RATIO in ratios and args.batches:  # do the levers add up?
        rows += [Config(TARGET_RATIO, ALIGN, channels_last=True, batch=min(args.batches))]
    if args.compile:
        rows += [Config(TARGET_RATIO if TARGET_RATIO in ratios else ratios[0], compile=True)]
    dense = [*dict.fromkeys(c.dense() for c in rows), *(Config(batch=b) for b in args.batches)]
    return dense + rows


def recipe_for(args: argparse.Namespace) -> Recipe:
    return load_recipe(
        "fashion_mnist_vgg_p30",
        [f"data.image_size={SIDE}", "data.train_subset=null", "data.test_subset=null",
         *args.overrides],
    )  # fmt: skip


def sgd(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """The recipe's optimiser (``train``: lr, momentum, weight decay)."""
    t = recipe.train
    return torch.optim.SGD(model.parameters(), t.lr, t.momentum, weight_decay=t.weight_decay)


def real_batches(data: Any, size: int, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` shuffled training batches of ``size`` images (the set repeated as needed)."""
    loader = torch.utils.data.DataLoader(data.train, batch_size=size, shuffle=True)
    return itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), count)


def ticket_model(recipe: Recipe, data: Any, steps: int) -> nn.Module:
    """The dense net whose BN scales the tickets are drawn from: ``steps`` steps of the
    recipe's BN-L1 training on the real images, or BN-randomised scales for 0 steps."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, num_classes=10, in_chans=1, **recipe.model.kwargs)
    if steps == 0:
        return randomize_batchnorm(model).eval()
    opt = sgd(model, recipe)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    l1 = BNL1Regularizer(bns, recipe.prune.sparsity)
    model.train()
    for images, labels in real_batches(data, recipe.train.batch_size, steps):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        l1()
        opt.step()
    return model.eval()


class Stepper:
    """One configuration's training step on its own copy of the model and optimiser."""

    def __init__(self, model: nn.Module, config: Config, recipe: Recipe, data: Any) -> None:
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).train().to(memory_format=fmt)
        self.opt = sgd(self.model, recipe)
        self.net = torch.compile(self.model) if config.compile else self.model
        self.batches = [
            (x.to(memory_format=fmt), y) for x, y in real_batches(data, config.batch, 4)
        ]
        self.i = 0
        self.compile_s: float | None = None
        if config.compile:  # the first steps compile forward and backward: timed apart
            start = time.perf_counter()
            self.step()
            self.step()
            self.compile_s = time.perf_counter() - start

    def step(self) -> None:
        images, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        loss = F.cross_entropy(self.net(images), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def time_steps(
    steppers: list[Callable[[], None]], *, rounds: int, block: int, warmup: int = 3
) -> list[tuple[float, float]]:
    """(wall, CPU) median seconds per step of each stepper: ``rounds`` rounds of ``block``
    steps, the order reversed every round, so drifting load hits every configuration alike.
    CPU time is this process's: on a shared host it leaves out the time other jobs held the
    core (with one torch thread it is the step's own compute, caches shared aside)."""
    for step in steppers:
        for _ in range(warmup):
            step()
    wall: list[list[float]] = [[] for _ in steppers]
    cpu: list[list[float]] = [[] for _ in steppers]
    order = list(range(len(steppers)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(block):
                steppers[i]()
            cpu[i].append((time.process_time() - start_cpu) / block)
            wall[i].append((time.perf_counter() - start) / block)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


# aten op name fragments -> the part of the step they belong to (the rest is "other")
OP_KINDS = {
    "conv": ("convolution",),
    "batchnorm": ("batch_norm",),
    "max-pool": ("max_pool",),
    "relu": ("threshold_backward", "relu", "clamp_min"),
}


def op_profile(step: Callable[[], None], steps: int = 10) -> dict[str, float]:
    """Self CPU milliseconds per step by kind of op (:data:`OP_KINDS`), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    kinds = dict.fromkeys([*OP_KINDS, "other"], 0.0)
    for event in prof.key_averages():
        kind = next((k for k, frags in OP_KINDS.items() if any(f in event.key for f in frags)),
                    "other")  # fmt: skip
        kinds[kind] += event.self_cpu_time_total / 1e3 / steps
    return kinds


class _Clock:
    """Engine callback: wall and CPU time at the end of every epoch (after evaluation)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = [(time.perf_counter(), time.process_time())]

    def end_of_epoch(self, epoch: int, stats: Any) -> bool:
        self.marks.append((time.perf_counter(), time.process_time()))
        return False


def engine_check(
    recipe: Recipe, nets: dict[Config, nn.Module], steps: int, repeats: int = 3
) -> list[dict[str, Any]]:
    """Real epochs of each net through ``build_trainer`` on ``steps`` batches and a test set 1/6
    their size (60k : 10k), without and with ``train.channels_last``: two epochs per fit, the
    second one (warm) timed, its training pass and the whole epoch with evaluation; median of
    ``repeats`` fits, the order of the nets reversed every repeat."""
    n = steps * recipe.train.batch_size
    sub = recipe.model_copy(deep=True)
    sub.data.train_subset, sub.data.test_subset = n, n // 6
    sub.train.milestones, sub.train.epochs = [], 2  # this order: both checked
    data = load_data(data_options(sub.data), seed=sub.seed)
    plan = [replace(c, channels_last=cl) for cl in (False, True) for c in nets]
    times: dict[Config, list[tuple[float, float, float]]] = {c: [] for c in plan}
    for r in range(repeats):
        for config in plan if r % 2 == 0 else plan[::-1]:
            sub.train.channels_last = config.channels_last
            clock = _Clock()
            net = copy.deepcopy(nets[replace(config, channels_last=False)])
            trainer = build_trainer(net, data, sub, "bench", device="cpu", progress=False,
                                    callbacks=[clock])  # fmt: skip
            history = trainer.fit()
            (wall1, cpu1), (wall2, cpu2) = clock.marks[-2:]
            times[config].append((history[-1].seconds, wall2 - wall1, cpu2 - cpu1))
    rows = []
    for config, measured in times.items():
        train_s, epoch_s, cpu_s = (statistics.median(m) for m in zip(*measured, strict=True))
        rows.append({**asdict(config), "lever": config.lever, "steps": steps,
                     "train_s": train_s, "epoch_s": epoch_s, "epoch_cpu_s": cpu_s})  # fmt: skip
        print(f"engine p={config.ratio} {config.lever}: train {train_s:.2f} s, "
              f"epoch {epoch_s:.2f} s", flush=True)  # fmt: skip
    return rows


def _row(c: Config, net: nn.Module, times: dict[Config, tuple[float, float]], dense_macs: int
         ) -> dict[str, Any]:  # fmt: skip
    """One configuration's numbers against the dense net with the same settings and the plain
    dense net (per-sample times: a larger batch is judged per image)."""
    (wall, cpu), (dense_wall, dense_cpu) = times[c], times[c.dense()]
    plain_wall = times[Config()][0] / 128
    macs = count_flops(net, (1, SIDE, SIDE)).macs
    steps = math.ceil(EPOCH_SAMPLES / c.batch)
    dense_batch = c.dense().batch
    row = {
        **asdict(c), "lever": c.lever, "step_ms": 1e3 * wall, "cpu_step_ms": 1e3 * cpu,
        "epoch_steps": steps, "epoch_s": wall * steps,
        "widths": [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)],
        "macs": macs, "mac_reduction": dense_macs / macs,
        "speedup": dense_wall / dense_batch / (wall / c.batch),
        "cpu_speedup": dense_cpu / dense_batch / (cpu / c.batch),
        "speedup_vs_plain_dense": plain_wall / (wall / c.batch),
    }  # fmt: skip
    row["efficiency"] = row["speedup"] / row["mac_reduction"]
    row["cpu_efficiency"] = row["cpu_speedup"] / row["mac_reduction"]
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    recipe = recipe_for(args)
    data = load_data(data_options(recipe.data), seed=recipe.seed)
    start = time.perf_counter()
    source = ticket_model(recipe, data, args.ticket_steps)
    ticket_s = time.perf_counter() - start
    example = torch.zeros(2, 1, SIDE, SIDE)
    graph = ChannelGraph(source, example)
    dense_macs = count_flops(source, (1, SIDE, SIDE)).macs
    plan = configs(args.ratios, args)
    nets: dict[tuple[float | None, int | None], nn.Module] = {(None, None): source}
    for c in plan:
        if (c.ratio, c.round_to) not in nets:
            ticket = graph.draw(c.ratio, max_group_ratio=recipe.prune.max_group_ratio,
                                round_to=c.round_to, warn=False)  # fmt: skip
            nets[c.ratio, c.round_to] = slim(source, ticket, example)
    steppers = []
    for c in plan:
        steppers.append(Stepper(nets[c.ratio, c.round_to], c, recipe, data))
        if c.compile:
            print(f"compiled p={c.ratio}: {steppers[-1].compile_s:.1f} s", flush=True)
    times = time_steps([s.step for s in steppers], rounds=args.rounds, block=args.block)
    by_config = dict(zip(plan, times, strict=True))
    rows = []
    for c, stepper in zip(plan, steppers, strict=True):
        rows.append({**_row(c, nets[c.ratio, c.round_to], by_config, dense_macs),
                     "compile_s": stepper.compile_s})  # fmt: skip
        r = rows[-1]
        print(f"p={c.ratio} {c.lever}: {r['step_ms']:.1f} ms/step, speedup {r['speedup']:.2f}x"
              f" (CPU {r['cpu_speedup']:.2f}x) vs MACs {r['mac_reduction']:.2f}x",
              flush=True)  # fmt: skip
    profile = {}
    for c in (Config(), Config(TARGET_RATIO)):
        for cl in (False, True):
            if replace(c, channels_last=cl) in by_config:
                name = ("dense" if c.ratio is None else f"p={c.ratio}") + " channels_last" * cl
                profile[name] = op_profile(steppers[plan.index(replace(c, channels_last=cl))].step)
    engine = []
    if args.engine_steps:
        picked = [Config(), Config(TARGET_RATIO), Config(TARGET_RATIO, ALIGN)]
        found = {c: nets[c.ratio, c.round_to] for c in picked if (c.ratio, c.round_to) in nets}
        engine = engine_check(recipe, found, args.engine_steps)
    return {"rows": rows, "profile": profile, "engine": engine, "ticket_seconds": ticket_s,
            "dense_macs": dense_macs}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--round-to", nargs="+", type=int, default=[4, 8, 16])
    parser.add_argument("--batches", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--rounds", type=int, help="timing rounds (default: by budget)")
    parser.add_argument("--block", type=int, help="steps per timed block (default: by budget)")
    parser.add_argument("--ticket-steps", type=int, help="BN-L1 steps before the draw (0: random)")
    parser.add_argument("--engine-steps", type=int, help="engine-check batches (0: skip)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    # One thread, as eb_vs_baselines (the headline) trains on this shared 2-core host.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--stem", help="results/<stem>.{json,md} (default: by budget)")
    args = parser.parse_args(argv)
    for key, value in BUDGETS[args.budget].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.stem = args.stem or ("slim_epoch_speed" if args.budget == "full" else
                              "slim_epoch_speed_short")  # fmt: skip
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    machine = machine_info()
    start = time.perf_counter()
    # A compile cache of its own: a cache left by an earlier run would make compiling look
    # cheap (the dense net's shapes repeat; a new ticket's slim shapes never do).
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            result = run(args)
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    result["wall_seconds"] = time.perf_counter() - start
    text = markdown(result, machine, args)
    data = {"machine": machine, "args": vars(args), "target": TARGET, **result}
    json_path, md_path = write_results(args.stem, data, text)
    print(text)
    print(f"wrote {json_path} and {md_path} in {result['wall_seconds']:.0f} s")
    return data


if __name__ == "__main__":
    main()

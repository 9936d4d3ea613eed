"""A new user's first runs: ``ebcompress prune`` on stock timm models and small real data sets.

Proof, as a user would see it, that ebcompress is safe on their own timm model and data. Every
Early-Bird run is the CLI, run as a subprocess exactly as a user would type it, with a short
user-style recipe YAML written into the run folder: timm's defaults (no ``model.kwargs``, so
ResNets keep ``zero_init_last=True``), one data set, a short plain SGD schedule and a pruning
ratio. Next to each (architecture, data set) one dense reference is trained with the library's
own engine (:func:`ebcompress.methods.training.build_trainer`, same ``recipe.train`` and seed,
no BN-L1 penalty) on the same epoch budget: the EB run's slim net also retrains a full
``train.epochs`` schedule (the library's default, ``retrain.schedule: restart``; a run whose
report shows another retrain length is named in the causes of target (b)).

Data: scikit-learn's embedded 8x8 digits (1,437 train / 360 test, resized to 32 px) for every
architecture at p = 0.3 and 0.5, and real Fashion-MNIST at 28 px (the IDX files in
/usr/share/datasets/fashion-mnist, a class-balanced subset) for the architectures that run at
28 px. ``in_chans`` is 1 for both: the library sets it from the data.

Targets, each written as met / **MISSED** with its cause:

- (a) every run learns: ``ebcompress prune`` exits 0 (a network that never learns is stopped
  with exit status 2 and one line on stderr: recorded as "did not learn"), its health status is
  not "failed", and the slim top-1 is at least 20 points above chance;
- (b) the slim top-1 is within 2 points of the dense reference at p = 0.3 and 4 at p = 0.5;
- (c) no channel group keeps under 10 % of its width unless the ticket's ``capped`` mapping or
  the report's health flags name it (per group kept / width, from ticket.json).

Resumable and incremental: the results are rewritten after every run; a finished run
(report.json present) is read back, not rerun; an interrupted one continues with
``ebcompress prune --resume`` (the dense reference resumes from its checkpoint). Writes
``<results>/user_models.{json,md}`` (``user_models_short.*`` for ``--budget short``).

    python benchmarks/user_models.py                   # full: about 50 min on 2 shared cores
    python benchmarks/user_models.py --budget short    # toy size, a few minutes
    python benchmarks/user_models.py --only resnet10t my_timm_model --datasets digits

A name given to ``--only`` that is not in the list below runs on every selected data set: that
is how to try your own timm model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import yaml
from torch.nn.modules.batchnorm import _BatchNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import RESULTS, machine_line  # noqa: E402

from ebcompress.cost.flops import count_flops  # noqa: E402
from ebcompress.data import load_data  # noqa: E402
from ebcompress.deploy.bench import machine_info  # noqa: E402
from ebcompress.errors import UserError  # noqa: E402
from ebcompress.methods.base import chance_top1  # noqa: E402
from ebcompress.methods.data import data_options  # noqa: E402
from ebcompress.methods.training import build_trainer  # noqa: E402
from ebcompress.models import build_model  # noqa: E402
from ebcompress.recipe import Recipe, load_recipe, parse_overrides  # noqa: E402

STEM = "user_models"
RATIOS = (0.3, 0.5)
ACCURACY_TOLERANCE = {0.3: 2.0, 0.5: 4.0}  # points the slim net may trail the dense reference
LEARN_MARGIN = 0.20  # slim top-1 must be at least this far above chance
MIN_GROUP_FRACTION = 0.10  # of a group's width, unless the ticket or health names the group
DATASETS = ("digits", "fashion_mnist")

# name -> (family, what makes it interesting). Per-epoch estimates: one forward/backward of a
# 64-image batch timed on this project's 2-core CPU, 1 torch thread, load average < 1
# (2026-12-01), scaled to an epoch (digits: 1,437 train + 360 test images at 32 px;
# Fashion-MNIST: 4,000 train + 2,000 test at 28 px); the engine's evaluation, BN-L1 and mask
# steps add some 20-30 %.
ARCHS: dict[str, tuple[str, str]] = {
    # digits 3.4 s/epoch; Fashion-MNIST 8.6 s/epoch
    "resnet10t": ("ResNet", "zero-initialised last BN per block (timm default)"),
    # digits 4.7 s/epoch (faster than resnet14t's 6.9 s: no deep stem)
    "resnet18": ("ResNet", "zero-initialised last BN per block (timm default)"),
    # digits 2.3 s/epoch; Fashion-MNIST 6.6 s/epoch
    "regnetx_002": ("RegNet", "grouped convs; zero-initialised last BN (13 BNs)"),
    # digits 2.3 s/epoch
    "cs3darknet_s": ("CSPNet", "cross-stage partial blocks; zero-initialised last BN (9 BNs)"),
    # digits 2.0 s/epoch; Fashion-MNIST 5.2 s/epoch
    "mobilenetv3_small_050": ("MobileNetV3", "depthwise, squeeze-excite, hard-swish"),
    # digits 3.5 s/epoch
    "tinynet_e": ("EfficientNet", "MBConv with squeeze-excite"),
    # digits 3.6 s/epoch; cannot run at 28 px (its last 2x2 downsampling meets a 1x1 map)
    "convnext_atto": ("ConvNeXt", "LayerNorm, no BatchNorm"),
    # digits 2.4 s/epoch; Fashion-MNIST 6.5 s/epoch
    "mobilevit_xxs": ("MobileViT", "BN convs + LayerNorm transformer; zero-initialised BNs"),
}

# Probed but left out at this budget (digits s/epoch): resnet14t 6.9, seresnext26t_32x4d 12.9,
# efficientnet_lite0 9.3, hardcorenas_a 6.6, repvit_m0_9 7.4, densenet121 11.3, gernet_s 5.2;
# lcnet_050 1.7, dla46_c 2.7 and ghostnet_050 3.1 would fit too.

# Full budget: per architecture one dense run (12 epochs) and two EB runs (search <= 12 dense
# epochs + 12 slim ones), some 44-54 dense-epoch equivalents with the engine's overhead; digits
# (8 archs, 24 s of epochs) ~25-30 min, Fashion-MNIST (4 archs, 27 s) ~25 min, plus ~8 s of CLI
# start-up per run: about 50 min on the 2-core machine, an hour if no ticket emerges.
SCHEDULE = {"epochs": 12, "batch_size": 64, "lr": 0.05, "milestones": [6, 9]}
SHORT_SCHEDULE = {"epochs": 3, "batch_size": 64, "lr": 0.05, "milestones": [2]}

# Per budget and data set: the recipe's data and train sections and the architectures run.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "digits": {
            "data": {"name": "digits", "image_size": 32},
            "train": SCHEDULE,
            "archs": list(ARCHS),
        },
        "fashion_mnist": {
            "data": {
                "name": "fashion_mnist",
                "image_size": 28,
                "train_subset": 4000,
                "test_subset": 2000,
            },
            "train": SCHEDULE,
            "archs": ["resnet10t", "regnetx_002", "mobilenetv3_small_050", "mobilevit_xxs"],
        },
    },
    "short": {
        "digits": {
            "data": {"name": "digits", "image_size": 32, "train_subset": 400, "test_subset": 200},
            "train": SHORT_SCHEDULE,
            "archs": ["resnet10t", "mobilenetv3_small_050", "convnext_atto"],
        },
        "fashion_mnist": {
            "data": {
                "name": "fashion_mnist",
                "image_size": 28,
                "train_subset": 400,
                "test_subset": 200,
            },
            "train": SHORT_SCHEDULE,
            "archs": ["resnet10t"],
        },
    },
}

# The CLI's one line for a network that never learned (not "lower the learning rate").
_NOT_LEARNED = re.compile(r"did not learn|never learn|not learning|stuck at chance", re.I)
SIDE_FILE = "bench.json"  # next to each EB run folder: outcome, wall clock, load


# ----------------------------------------------------------------------------- recipes


def family_of(arch: str) -> str:
    """The family of a listed architecture, else timm's module name for it."""
    if arch in ARCHS:
        return ARCHS[arch][0]
    try:
        return timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    except (RuntimeError, KeyError):
        return "?"


def user_recipe(
    budget: str, dataset: str, arch: str, ratio: float, overrides: list[str]
) -> dict[str, Any]:
    """The YAML mapping a user would write: model by name only, data, schedule, ratio."""
    spec = BUDGETS[budget][dataset]
    recipe: dict[str, Any] = {
        "model": {"name": f"timm:{arch}"},
        "data": dict(spec["data"]),
        "train": dict(spec["train"]),
        "prune": {"ratio": ratio},
    }
    # No retrain section: the library's default retrains a restarted full schedule, the dense
    # reference's epoch budget (each row records the retrain length its report shows).
    return _merge(recipe, parse_overrides(overrides))


def _merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def recipe_text(recipe: dict[str, Any]) -> str:
    """Flow-style YAML, one section a line, as a user would type it."""
    return "".join(
        f"{key}: "
        + yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
        + "\n"
        for key, value in recipe.items()
    )


def write_recipe(path: Path, text: str, run_dirs: list[Path]) -> None:
    """Write the recipe file; one that differs while its runs exist is another configuration."""
    changed = path.is_file() and path.read_text(encoding="utf-8") != text
    if changed and any(d.exists() for d in run_dirs):
        raise UserError(
            f"{str(path)!r} holds another configuration than this invocation's and its runs "
            "exist; delete that folder or choose another --runs folder"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------- dense reference


def dense_reference(
    recipe: Recipe, out: Path, *, data_root: str | None, device: str, progress: bool
) -> dict[str, Any]:
    """Train the dense model of ``recipe`` with the library's engine, as the pipeline's search
    would but without the BN-L1 penalty; read back when finished."""
    done = out / "dense.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    resumed = (out / "checkpoints").exists()
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    data = load_data(data_options(recipe.data), root=data_root, seed=recipe.seed)
    input_size = (data.in_chans, data.image_size, data.image_size)
    torch.manual_seed(recipe.seed)  # what the pipeline's build_dense does
    model = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
    zero_bns = [
        name
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.affine and not bool(m.weight.detach().any())
    ]
    cost = count_flops(model, input_size)
    _seed_globals(recipe.seed)  # the pipeline seeds its search phase the same way
    trainer = build_trainer(
        model, data, recipe, "dense", device=device, run_dir=out, progress=progress
    )
    history = trainer.fit(resume=True)
    final = trainer.evaluate()
    record = {
        "model": recipe.model.name,
        "top1": final["top1"],
        "epochs": recipe.train.epochs,
        "test_images": final["samples"],
        "num_classes": data.num_classes,
        "chance_top1": chance_top1(data),
        "params": cost.params,
        "macs": cost.macs,
        "zero_init_bns": len(zero_bns),
        "test_top1_per_epoch": [s.test_top1 for s in history],
        "train_seconds": sum(s.seconds for s in history),
        "wall_seconds": time.perf_counter() - start,
        "resumed": resumed,
        "load_average": [load_before, os.getloadavg()[0]],
        "machine": machine_info(device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(done, record)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # finished: dense.json is the record
    return record


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ----------------------------------------------------------------------------- EB via the CLI


def cli_command() -> list[str]:
    """The console script next to this interpreter (what a user types), else ``-m``."""
    script = Path(sys.executable).with_name("ebcompress")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ebcompress"]


def run_eb(
    recipe_path: Path,
    run_dir: Path,
    *,
    data_root: str | None,
    device: str,
    threads: int,
    quiet: bool,
) -> dict[str, Any]:
    """Run (or read back) ``ebcompress prune`` into ``run_dir``; the outcome record.

    A finished run (report.json) and a recorded "did not learn" are read back; a crash or a
    refusal (perhaps a library edit in progress) is tried again by the next invocation.
    """
    side = run_dir.with_name(f"{run_dir.name}.{SIDE_FILE}")
    saved = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else None
    if (run_dir / "report.json").is_file():
        if saved and saved.get("status") == "ok":
            return saved
        return {"status": "ok", "wall_seconds": None, "resumed": None, "read_back": True}
    if saved and saved.get("status") == "did not learn":
        return saved
    # Anything in the folder (even the lock of a run killed at once) is a run to continue.
    resume = run_dir.is_dir() and any(run_dir.iterdir())
    argv = [*cli_command(), "prune", "--recipe", str(recipe_path), "--out", str(run_dir)]
    argv += ["--device", device]
    if data_root is not None:
        argv += ["--data", data_root]
    if resume:
        argv.append("--resume")
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_path = run_dir.with_name(f"{run_dir.name}.log")
    err_path = run_dir.with_name(f"{run_dir.name}.stderr")
    machine, load_before = machine_info(device), os.getloadavg()[0]
    start = time.perf_counter()
    with (
        log_path.open("a", encoding="utf-8") as log,
        err_path.open("w", encoding="utf-8") as err,
    ):
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if not quiet:
                sys.stdout.write(line)
        code = proc.wait()
    wall = time.perf_counter() - start
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    record = {
        "status": _status(code, stderr, run_dir),
        "exit": code,
        "line": _error_line(stderr) if code != 0 else "",
        "command": argv,
        "machine": machine,
        "wall_seconds": wall,
        "resumed": resume,
        "load_average": [load_before, os.getloadavg()[0]],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(side, record)
    return record


def _status(code: int, stderr: str, run_dir: Path) -> str:
    if code == 0:
        return "ok" if (run_dir / "report.json").is_file() else "crashed (no report.json)"
    if code == 2:
        line = _error_line(stderr)
        return "did not learn" if _NOT_LEARNED.search(line) else "refused"
    return f"crashed (exit {code})"


def _error_line(stderr: str) -> str:
    """The CLI's one-line message (``error: ...``), else the last line of stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


# ----------------------------------------------------------------------------- one row


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def group_fractions(ticket: dict[str, Any]) -> list[dict[str, Any]]:
    """Per group of ticket.json: name, width, kept count and kept / width."""
    groups = ticket.get("groups") or []
    if isinstance(groups, dict):  # tolerate a name -> {width, kept} layout
        groups = [{"name": name, **value} for name, value in groups.items()]
    out = []
    for group in groups:
        width = int(group.get("width") or 0)
        kept = group.get("kept")
        count = len(kept) if isinstance(kept, list) else int(kept or 0)
        if width > 0:
            out.append(
                {
                    "group": group.get("name"),
                    "width": width,
                    "kept": count,
                    "fraction": count / width,
                }
            )
    return out


def build_row(
    dataset: str,
    arch: str,
    ratio: float,
    run_dir: Path,
    outcome: dict[str, Any],
    dense: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything the table and the targets need from one EB run and its dense reference."""
    row: dict[str, Any] = {
        "dataset": dataset,
        "arch": arch,
        "family": family_of(arch),
        "ratio": ratio,
        "status": outcome.get("status"),
        "message": outcome.get("line", ""),
        "run_dir": str(run_dir),
        "wall_seconds": outcome.get("wall_seconds"),
        "resumed": outcome.get("resumed"),
        "load_average": outcome.get("load_average"),
        "dense_ref_top1": None if dense is None else dense.get("top1"),
        "dense_ref_error": None if dense is None else dense.get("error"),
        "chance_top1": None if dense is None else dense.get("chance_top1"),
    }
    report = _read_json(run_dir / "report.json")
    if outcome.get("status") != "ok" or not report:
        return row
    ticket_file = _read_json(run_dir / "ticket.json")
    health = report.get("health") or {}
    ticket = report.get("ticket") or {}
    model = report.get("model") or {}
    cost = report.get("cost") or {}
    timing = report.get("timing") or {}
    at_ticket = health.get("dense_top1_at_ticket")
    if at_ticket is None:
        at_ticket = next(
            (
                e.get("test_top1")
                for e in report.get("epochs") or []
                if e.get("phase") == "search" and e.get("epoch") == ticket.get("epoch")
            ),
            None,
        )
    capped = {**(ticket_file.get("capped") or {}), **(health.get("capped_groups") or {})}
    flags = [str(f) for f in health.get("flags") or []]
    low = []
    for g in group_fractions(ticket_file):
        if g["fraction"] < MIN_GROUP_FRACTION:
            named = [f"capped: {capped[g['group']]}"] if g["group"] in capped else []
            named += ["health flag"] if any(str(g["group"]) in f for f in flags) else []
            low.append({**g, "named_by": named})
    dense_m, slim_m = model.get("dense") or {}, model.get("slim") or {}
    chance = health.get("chance_top1", row["chance_top1"])
    row.update(
        {
            "chance_top1": chance,
            "slim_top1": (report.get("accuracy") or {}).get("test_top1"),
            "dense_top1_at_ticket": at_ticket,
            "ticket_epoch": ticket.get("epoch"),
            "emerged": ticket.get("emerged"),
            "pruned_fraction": ticket.get("pruned_fraction"),
            "retrain_epochs": (report.get("retrain") or {}).get("epochs"),
            "schedule_epochs": ((report.get("recipe") or {}).get("train") or {}).get("epochs"),
            "test_images": (report.get("data") or {}).get("test"),
            "params": [dense_m.get("params"), slim_m.get("params")],
            "macs": [dense_m.get("macs"), slim_m.get("macs")],
            "saving_vs_dense": cost.get("saving_vs_dense"),
            "report_seconds": timing.get("total_seconds"),
            "health": health or None,
            "capped": capped,
            "zero_init_bns": list(
                health.get("zero_init_bns") or ticket_file.get("zero_init_bns") or []
            ),
            "kept_dense_groups": health.get("kept_dense_groups")
            or ticket_file.get("kept_dense")
            or (ticket_file.get("extra") or {}).get("kept_dense")  # older tickets: untyped
            or {},
            "groups": len(group_fractions(ticket_file)),
            "groups_below_10pct": low,
        }
    )
    curve = (dense or {}).get("test_top1_per_epoch") or []
    epoch = row["ticket_epoch"]
    # The plain dense run at the ticket's epoch: what the search's BN-L1 penalty changed by
    # then (dense_top1_at_ticket is the search's own network).
    row["dense_ref_top1_at_ticket_epoch"] = (
        curve[epoch - 1] if isinstance(epoch, int) and 0 < epoch <= len(curve) else None
    )
    if row["wall_seconds"] is None:
        row["wall_seconds"] = row["report_seconds"]
    if row["slim_top1"] is not None and row["dense_ref_top1"] is not None:
        row["delta_points"] = 100 * (row["slim_top1"] - row["dense_ref_top1"])
    return row


# ----------------------------------------------------------------------------- targets


def assess(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The three targets over all rows: how many met, and each miss with its cause."""
    checks = {"a": _learns, "b": _accuracy, "c": _groups}
    titles = {
        "a": f"every run learns (exit 0, health not failed, slim top-1 >= chance + "
        f"{100 * LEARN_MARGIN:.0f} points)",
        "b": "slim top-1 within "
        + " / ".join(f"{t:g} points at p = {p:g}" for p, t in ACCURACY_TOLERANCE.items())
        + " of the dense reference",
        "c": f"no group below {100 * MIN_GROUP_FRACTION:.0f} % of its width unless the ticket's "
        "capped mapping or a health flag names it",
    }
    verdicts = []
    for key, check in checks.items():
        evaluated, misses = 0, []
        for row in rows:
            result = check(row)
            if result is None:  # no target for this row (e.g. a ratio without a tolerance)
                continue
            evaluated += 1
            if result:
                misses.append({"run": _run_name(row), "why": result})
        verdicts.append(
            {
                "target": key,
                "title": titles[key],
                "evaluated": evaluated,
                "met_by": evaluated - len(misses),
                "met": evaluated > 0 and not misses,
                "misses": misses,
            }
        )
    for row in rows:
        row["targets"] = {key: (check(row) or "") for key, check in checks.items()}
    return verdicts


def _run_name(row: dict[str, Any]) -> str:
    return f"{row['dataset']} {row['arch']} p={row['ratio']:g}"


def _not_finished(row: dict[str, Any]) -> str | None:
    if row["status"] == "ok" and row.get("slim_top1") is not None:
        return None
    status = row["status"] or "not run"
    return f"{status}: {row['message']}" if row.get("message") else status


def _learns(row: dict[str, Any]) -> str:
    """'' when the run learned, else why not."""
    unfinished = _not_finished(row)
    if unfinished:
        return unfinished
    health = row.get("health") or {}
    if health.get("status") == "failed":
        return "health failed: " + "; ".join(health.get("flags") or ["no flags"])
    chance = row.get("chance_top1") or 0.0
    if row["slim_top1"] < chance + LEARN_MARGIN:
        return (
            f"slim top-1 {100 * row['slim_top1']:.2f} % against chance {100 * chance:.0f} % "
            f"(ticket at epoch {row['ticket_epoch']}, dense {_pct(row['dense_top1_at_ticket'])} "
            "there)"
        )
    return ""


def _accuracy(row: dict[str, Any]) -> str | None:
    tolerance = ACCURACY_TOLERANCE.get(row["ratio"])
    if tolerance is None:
        return None
    unfinished = _not_finished(row)
    if unfinished:
        return unfinished
    if row.get("dense_ref_top1") is None:
        return f"no dense reference ({row.get('dense_ref_error') or 'not trained'})"
    delta = row["delta_points"]
    if delta >= -tolerance:
        return ""
    ticket = "emerged" if row["emerged"] else "did not emerge; newest mask drawn"
    reason = (
        f"slim {100 * row['slim_top1']:.2f} % vs dense {100 * row['dense_ref_top1']:.2f} % "
        f"({delta:+.2f} points, allowed -{tolerance:g}); ticket at epoch {row['ticket_epoch']} "
        f"({ticket}), the search's dense net {_pct(row['dense_top1_at_ticket'])} there (the "
        f"plain dense run {_pct(row.get('dense_ref_top1_at_ticket_epoch'))}); "
        f"{100 * (row['pruned_fraction'] or 0):.0f} % of the channels pruned, "
        f"{_ratio(row['params'])} fewer params"
    )
    n = row.get("test_images")
    if n:
        a, b = row["slim_top1"], row["dense_ref_top1"]
        se = 100 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)
        reason += f"; standard error of the difference {se:.2f} points on {n} test images"
    if row.get("retrain_epochs") != row.get("schedule_epochs"):
        reason += f"; the slim net retrained {row.get('retrain_epochs')} epochs, not the schedule"
    flags = (row.get("health") or {}).get("flags") or []
    if flags:
        reason += "; health: " + "; ".join(flags)
    return reason


def _groups(row: dict[str, Any]) -> str:
    unfinished = _not_finished(row)
    if unfinished:
        return unfinished
    unnamed = [g for g in row["groups_below_10pct"] if not g["named_by"]]
    if not unnamed:
        return ""
    shown = ", ".join(
        f"{g['group']} keeps {g['kept']} of {g['width']} ({100 * g['fraction']:.1f} %)"
        for g in unnamed[:4]
    )
    more = f" and {len(unnamed) - 4} more" if len(unnamed) > 4 else ""
    return f"{shown}{more}, named neither in ticket.json's capped nor in the health flags"


# ----------------------------------------------------------------------------- the page


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _ratio(pair: list[Any] | None) -> str:
    if not pair or not pair[0] or not pair[1]:
        return "?"
    return f"{pair[0] / pair[1]:.2f}x"


def _count(value: float | None) -> str:
    if value is None:
        return "?"
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{prefix}"
    return f"{value:.0f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _health_cell(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return _cell(f"**{row['status']}**: {row['message']}")
    health = row.get("health")
    if not health:
        return "n/a (no health block)"
    flags = health.get("flags") or []
    status = health.get("status", "?")
    status = status if status == "ok" else f"**{status}**"
    return _cell(status + (": " + "; ".join(flags) if flags else ""))


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        "# ebcompress on stock timm models: a new user's first runs",
        "",
        machine_line(result["machine"]) + f" timm {result['timm']}.",
        f"Budget `{result['budget']}`; {len(rows)} Early-Bird runs"
        + (" (in progress)" if not result["complete"] else "")
        + f" and {len(result['dense'])} dense references took "
        f"{result['wall_seconds'] / 60:.1f} min of wall time in all, one after the other, "
        f"{result['threads']} torch thread(s) each"
        + (f"; the last finished {result['last_finished']}" if result["last_finished"] else "")
        + ".",
        "",
        "Each EB run is `ebcompress prune --recipe <arch folder>/recipe_pNN.yaml --out ...` "
        "(the CLI, as a user runs it) on the recipes below: timm defaults, no model kwargs. The "
        "dense reference trains the same model, data, schedule and seed with the library's "
        "engine, without the BN-L1 penalty; the slim net retrains the same number of epochs.",
    ]
    for dataset in result["datasets"]:
        ds_rows = [r for r in rows if r["dataset"] == dataset]
        if not ds_rows:
            continue
        lines += [
            "",
            f"## {dataset}",
            "",
            "| arch | family | p | dense ref top-1 | dense at ticket: search / plain | "
            "ticket epoch | slim top-1 | delta | params dense -> slim | MACs dense -> slim | "
            "FLOPs saving | zero-init BNs | wall s | health |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ds_rows:
            if r.get("slim_top1") is None:
                lines.append(
                    f"| {r['arch']} | {r['family']} | {r['ratio']:g} | {_pct(r['dense_ref_top1'])} "
                    f"| — | — | — | — | — | — | — | — | {_wall(r)} | {_health_cell(r)} |"
                )
                continue
            ticket = f"{r['ticket_epoch']}" + ("" if r["emerged"] else " (not emerged)")
            delta = "—" if r.get("delta_points") is None else f"{r['delta_points']:+.2f}"
            params = f"{_count(r['params'][0])} -> {_count(r['params'][1])}"
            macs = f"{_count(r['macs'][0])} -> {_count(r['macs'][1])}"
            saving = "?" if r["saving_vs_dense"] is None else f"{r['saving_vs_dense']:.2f}x"
            lines.append(
                f"| {r['arch']} | {r['family']} | {r['ratio']:g} | {_pct(r['dense_ref_top1'])} "
                f"| {_pct(r['dense_top1_at_ticket'])} / "
                f"{_pct(r['dense_ref_top1_at_ticket_epoch'])} "
                f"| {ticket} | {_pct(r['slim_top1'])} "
                f"| {delta} | {params} | {macs} | {saving} | {len(r['zero_init_bns'])} "
                f"| {_wall(r)} | {_health_cell(r)} |"
            )
    lines += [
        "",
        "dense at ticket: the search's dense network (with the BN-L1 penalty) and "
        "the plain dense reference, both at the ticket's epoch. "
        "delta: slim minus dense reference, points of top-1. FLOPs saving: the run's training "
        "FLOPs (dense search + slim retrain) against one dense training of the schedule "
        "(report.json `cost.saving_vs_dense`); the slim net retrains a full schedule, so a late "
        "ticket can cost more than dense (< 1x). zero-init BNs: BatchNorms that timm "
        "initialised to zero scale; the BN-scale ranking leaves them out of their groups' "
        "importance.",
        "",
        "## Targets",
        "",
        "| target | runs meeting it | verdict |",
        "|---|---|---|",
    ]
    for v in result["targets"]:
        lines.append(
            f"| ({v['target']}) {v['title']} | {v['met_by']} / {v['evaluated']} | "
            f"{'met' if v['met'] else '**MISSED**'} |"
        )
    misses = [(v["target"], m) for v in result["targets"] for m in v["misses"]]
    if misses:
        lines += ["", "Causes of the misses:", ""]
        lines += [f"- ({key}) {m['run']}: {_cell(m['why'])}" for key, m in misses]
    low = [
        (r, g) for r in rows for g in r.get("groups_below_10pct") or [] if g["named_by"]
    ]  # below 10 % but accounted for
    if low:
        lines += ["", "Groups below 10 % of their width that the ticket or health names:", ""]
        lines += [
            f"- {_run_name(r)}: {g['group']} {g['kept']} / {g['width']} "
            f"({', '.join(g['named_by'])})"
            for r, g in low
        ]
    lines += ["", "## Recipes", ""]
    for dataset, text in result["recipes"].items():
        lines += [
            f"{dataset} (the other ratios: the same with their `prune.ratio`; `ARCH` is each "
            "architecture of its table):",
            "",
            "```yaml",
            text.rstrip("\n"),
            "```",
            "",
        ]
    lines += ["Dense references (library engine, same recipe.train and seed):", ""]
    lines += [
        f"- {d['dataset']} {d['arch']}: {_pct(d.get('top1'))} after {d.get('epochs', '?')} epochs, "
        f"{d.get('zero_init_bns', '?')} zero-initialised BNs, {_wall(d)} s"
        + (f" — **failed**: {d['error']}" if d.get("error") else "")
        for d in result["dense"]
    ]
    return "\n".join(lines) + "\n"


def _wall(record: dict[str, Any]) -> str:
    wall = record.get("wall_seconds")
    return "?" if wall is None else f"{wall:.0f}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- main


def _plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(data set, architecture) pairs in run order."""
    budget = BUDGETS[args.budget]
    listed = {a for spec in budget.values() for a in spec["archs"]} | set(ARCHS)
    plan = []
    for dataset in args.datasets:
        archs = budget[dataset]["archs"]
        if args.only:
            archs = [a for a in args.only if a in archs or a not in listed]
        plan += [(dataset, arch) for arch in archs]
    return plan


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", choices=list(BUDGETS), default="full")
    parser.add_argument("--only", nargs="+", metavar="ARCH", help="these timm models only")
    parser.add_argument(
        "--datasets", type=lambda s: [d for d in s.split(",") if d], default=list(DATASETS)
    )
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="K=V",
        help="an override written into every recipe, e.g. train.epochs=6",
    )  # fmt: skip
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder (--data)")
    parser.add_argument("--runs", type=Path, help="run folders (default runs/bench_<stem>)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    unknown = sorted(set(args.datasets) - set(DATASETS))
    if unknown:
        raise UserError(f"--datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stem = STEM if args.budget == "full" else f"{STEM}_{args.budget}"
    runs = args.runs or Path("runs") / f"bench_{stem}"
    ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    plan = _plan(args)
    started = time.perf_counter()
    state: dict[str, Any] = {"rows": [], "dense": [], "recipes": {}, "records": []}

    def publish(complete: bool) -> dict[str, Any]:
        result = _result(args, stem, runs, ratios, plan, state, complete)
        result["invocation_seconds"] = time.perf_counter() - started
        args.results.mkdir(parents=True, exist_ok=True)
        _write_json(args.results / f"{stem}.json", result)
        (args.results / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
        return result

    for dataset, arch in plan:
        folder = runs / dataset / arch
        root = args.data_root if dataset != "digits" else None
        paths = {}
        for ratio in ratios:
            recipe = user_recipe(args.budget, dataset, arch, ratio, args.overrides)
            paths[ratio] = folder / f"recipe_p{round(100 * ratio):02d}.yaml"
            write_recipe(paths[ratio], recipe_text(recipe), [_eb_dir(folder, ratio)])
            if ratio == ratios[0]:
                template = _merge(recipe, {"model": {"name": "timm:ARCH"}})
                state["recipes"].setdefault(dataset, recipe_text(template))
        try:
            dense = dense_reference(
                load_recipe(str(paths[ratios[0]])),
                folder / "dense",
                data_root=root,
                device=args.device,
                progress=not args.quiet,
            )
        except (UserError, RuntimeError, ValueError) as exc:  # the EB runs say more
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            dense = {"error": f"{type(exc).__name__}: {first}"}
        state["dense"].append({"dataset": dataset, "arch": arch, **dense})
        print(f"== {dataset} {arch} dense reference: {_pct(dense.get('top1'))}", flush=True)
        publish(False)
        for ratio in ratios:
            run_dir = _eb_dir(folder, ratio)
            outcome = run_eb(
                paths[ratio],
                run_dir,
                data_root=root,
                device=args.device,
                threads=args.threads,
                quiet=args.quiet,
            )
            state["records"].append(outcome)
            row = build_row(dataset, arch, ratio, run_dir, outcome, dense)
            state["rows"].append(row)
            print(
                f"== {dataset} {arch} p={ratio:g}: {row['status']}, slim top-1 "
                f"{_pct(row.get('slim_top1'))} ({_wall(row)} s)"
                + (f": {row['message']}" if row["message"] else ""),
                flush=True,
            )
            publish(False)
    result = publish(True)
    print(markdown(result))
    print(f"wrote {args.results / stem}.json and .md")
    return result


def _eb_dir(folder: Path, ratio: float) -> Path:
    return folder / f"eb_p{round(100 * ratio):02d}"


def _result(
    args: argparse.Namespace,
    stem: str,
    runs: Path,
    ratios: list[float],
    plan: list[tuple[str, str]],
    state: dict[str, Any],
    complete: bool,
) -> dict[str, Any]:
    rows = [dict(r) for r in state["rows"]]
    targets = assess(rows)
    timed = [r for r in [*state["records"], *state["dense"]] if r.get("machine")]
    first = min(timed, key=lambda r: r["machine"]["date"]) if timed else None
    walls = [r.get("wall_seconds") or 0.0 for r in [*rows, *state["dense"]]]
    finished = [r["finished"] for r in [*state["records"], *state["dense"]] if r.get("finished")]
    return {
        "benchmark": STEM,
        "stem": stem,
        # The first run's machine and start date (reading finished runs back changes neither).
        "machine": first["machine"] if first else machine_info(args.device),
        "timm": timm.__version__,
        "budget": args.budget,
        "argv": args.argv,
        "complete": complete,
        "threads": args.threads if args.threads > 0 else torch.get_num_threads(),
        "datasets": args.datasets,
        "ratios": ratios,
        "plan": [list(p) for p in plan],
        "runs": str(runs),
        "wall_seconds": sum(walls),
        "last_finished": max(finished) if finished else None,
        "targets_spec": {
            "learn_margin": LEARN_MARGIN,
            "accuracy_tolerance": {f"{p:g}": t for p, t in ACCURACY_TOLERANCE.items()},
            "min_group_fraction": MIN_GROUP_FRACTION,
        },
        "recipes": state["recipes"],
        "rows": rows,
        "dense": state["dense"],
        "targets": targets,
    }


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

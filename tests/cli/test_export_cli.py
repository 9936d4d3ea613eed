"""``ebcompress export`` and ``ebcompress bench`` on a bundle, and their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import ebcompress.cli.export  # noqa: F401  (registers the commands on the app)
from ebcompress.channels.graph import draw_ticket
from ebcompress.channels.slim import slim
from ebcompress.cli.app import EXIT_USER_ERROR, main
from ebcompress.deploy.bundle import ModelSpec, export_bundle


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory whose model/ holds a slim narrow VGG bundle, as the pipeline leaves it."""
    spec = ModelSpec(
        "vgg11_cifar", {"width_mult": 0.25}, 10, 3, (3, 32, 32), (0.5,) * 3, (0.25,) * 3
    )
    dense = spec.build_dense()
    example = spec.example_inputs(2)
    ticket = draw_ticket(dense, 0.5, example_inputs=example)
    run = tmp_path_factory.mktemp("runs") / "vgg"
    export_bundle(slim(dense, ticket, example), run / "model", spec=spec, ticket=ticket)
    return run


def user_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize(
    ("fmt", "file_name"), [("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")]
)
def test_export_writes_a_verified_file_into_the_bundle(run_dir, capsys, fmt, file_name):
    main(["export", str(run_dir), "--format", fmt])
    target = run_dir / "model" / file_name
    assert target.is_file() and target.stat().st_size > 0
    assert "verified" in capsys.readouterr().out


def test_export_copies_a_bundle_to_out(run_dir, tmp_path):
    main(["export", str(run_dir / "model"), "--out", str(tmp_path / "copy")])
    assert (tmp_path / "copy" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["slim"] is True


def test_export_static_batch_to_out(run_dir, tmp_path):
    out = str(tmp_path / "m.onnx")
    main(["export", str(run_dir), "-f", "onnx", "--static-batch", "--opset", "13", "-o", out])
    assert (tmp_path / "m.onnx").is_file()


def test_bench_prints_a_table_and_writes_json(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich would wrap the headers at 80
    out = tmp_path / "bench.json"
    options = ["--batch-sizes", "1,2", "--repeats", "2", "--warmup", "1", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        main(["bench", str(run_dir), *options, "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "speedup" in printed and "MAC reduction" in printed
    data = json.loads(out.read_text())
    assert [t["batch_size"] for t in data["timings"]] == [1, 2]
    assert data["mac_reduction"] > 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{missing}"], "does not exist"),
        (["export", "{run}", "--format", "tflite"], "'tflite' is not one of"),
        (["export", "{run}"], "already a bundle; give --out"),
        (["bench", "{run}", "--batch-sizes", "1,x"], "--batch-sizes"),
        (["bench", "{missing}"], "does not exist"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(run_dir, tmp_path, capsys, argv, message):
    paths = {"missing": str(tmp_path / "no_such_run"), "run": str(run_dir)}
    line = user_error(capsys, [arg.format(**paths) for arg in argv])
    assert line.startswith("error: ") and message in line


@pytest.mark.slow
def test_python_m_ebcompress_missing_path(tmp_path):
    missing = tmp_path / "nothing"
    done = subprocess.run(
        [sys.executable, "-m", "ebcompress", "export", str(missing), "--format", "onnx"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == EXIT_USER_ERROR
    assert done.stderr.strip().splitlines() == [
        f"error: {str(missing)!r} does not exist; give a bundle folder or a run directory"
    ]


def test_export_never_needs_a_checkpoint_pickle(run_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    main(["export", str(run_dir), "--format", "onnx", "--out", str(run_dir / "again.onnx")])

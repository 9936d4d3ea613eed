"""The command line: user mistakes exit 2 with one line; the info commands work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ebcompress.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["prune", "--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
        (["prune", "--recipe", "quickstart", "--set", "prune.ratio=1.5"], "prune.ratio"),
        (
            ["prune", "--recipe", "quickstart", "--set", "train.epoch=3"],
            "unknown key 'train.epoch'",
        ),
        (["prune", "--recipe", "quickstart", "--method", "magic"], "prune.method"),
        (["prune", "--recipe", "/no/such.yaml"], "does not exist"),
        (["prune"], "Missing option '--recipe'"),
        (["prune", "--recipe", "quickstart", "--bogus"], "No such option"),
        (["prune", "--recipe", "quickstart", "--ratios", "0.3,x"], "--ratios '0.3,x'"),
        (["prune", "--recipe", "quickstart", "--ratios", "0.3,1.5"], "outside (0, 1)"),
        (["flops", "vgg16_cifar", "--epochs", "3"], "give both --epochs and --samples"),
        (["flops", "no_such_model_xyz"], "no_such_model_xyz"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, argv, expected) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err + out


def test_prune_refuses_a_missing_data_folder(capsys, tmp_path) -> None:
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(
        capsys,
        "prune",
        "--recipe",
        "quickstart",
        "--set",
        "data.name=fashion_mnist",
        "--data",
        str(missing),
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and str(missing) in err and len(err.strip().splitlines()) == 1


def test_prune_stops_on_a_corrupt_image_with_one_line(capsys, tmp_path) -> None:
    from data_fakes import write_fake_imagefolder

    root = write_fake_imagefolder(tmp_path / "images", classes=("a", "b"), per_class=(3, 1))
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    code, out, err = run_cli(
        capsys,
        "prune",
        "--recipe",
        "quickstart",
        "--set",
        "data.name=imagefolder",
        "--data",
        str(root),
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "data.skip_bad_images: true" in lines[0]
    assert "Traceback" not in err + out


def test_recipes_lists_the_shipped_recipes(capsys) -> None:
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    for name in ("quickstart", "vgg16_cifar10_p30", "resnet50_imagenet_p30"):
        assert name in out


def test_flops_reports_macs_flops_params_and_training_flops(capsys) -> None:
    code, out, _ = run_cli(
        capsys,
        "flops",
        "vgg16_cifar",
        "--input-size",
        "3",
        "32",
        "32",
        "--num-classes",
        "10",
        "--epochs",
        "160",
        "--samples",
        "50000",
        "--json",
    )
    assert code == 0
    data = json.loads(out)
    assert round(data["macs"] / 1e6, 1) == 314.6
    assert data["flops"] == 2 * data["macs"]
    assert data["training_flops"] == 3 * 2 * data["macs"] * 50000 * 160


def test_console_script_entry_point_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ebcompress", "prune", "--recipe", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown recipe 'nope'")


@pytest.mark.slow
def test_prune_with_several_ratios_runs_each_sharing_one_search(capsys, tmp_path) -> None:
    sets = ["train.epochs=3", "train.milestones=[2]", "data.train_subset=192"]
    sets += ["data.test_subset=96", "prune.window=2", "retrain.epochs=1"]
    argv = ["prune", "--recipe", "quickstart", "--out", str(tmp_path), "--ratios", "0.3,0.7"]
    code, out, err = run_cli(capsys, *argv, *[a for s in sets for a in ("--set", s)])
    assert code == 0, err
    assert "eb_p30" in {p.name for p in tmp_path.iterdir()} and (tmp_path / "eb_p70").is_dir()
    assert (tmp_path / "shared" / "eb_p30_p70" / "recipe.yaml").is_file()
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [(r["method"], r["ratio"], r["shared_search"]) for r in rows] == [
        ("eb", 0.3, "eb_p30_p70"),
        ("eb", 0.7, "eb_p30_p70"),
    ]
    assert "compare.md" in out

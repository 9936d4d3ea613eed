"""A newcomer's own model and data: no silent collapse, no ticket from a network that never
learned, and a health verdict that never calls a broken model a success."""

from __future__ import annotations

import json

import pytest
from run_fakes import make_fake_run_dir

from ebcompress.channels.ticket import Ticket
from ebcompress.cli import main
from ebcompress.cli.prune import print_summary
from ebcompress.errors import UserError
from ebcompress.recipe import load_recipe
from ebcompress.report.build import build_report, write_report
from ebcompress.run.compare import write_compare
from ebcompress.run.pipeline import run_pipeline

# A user-style recipe: a timm residual net with its defaults (zero_init_last=True), no kwargs.
USER_RESNET = """
model: {name: "timm:test_resnet"}
data: {name: digits, image_size: 16, train_subset: 320, test_subset: 120}
train: {epochs: 6, milestones: [4], batch_size: 32, lr: 0.05}
prune: {ratio: 0.5, window: 2, epsilon: 0.5}
"""


@pytest.mark.slow
def test_a_default_timm_resnet_keeps_its_residual_stream(tmp_path) -> None:
    path = tmp_path / "user.yaml"
    path.write_text(USER_RESNET)
    run_dir = tmp_path / "resnet"
    report = run_pipeline(load_recipe(str(path)), run_dir, progress=False)
    ticket = Ticket.load(run_dir / "ticket.json")
    assert ticket.zero_init_bns == (
        "layer1.0.bn2",
        "layer2.0.bn2",
        "layer3.0.bn3",
        "layer4.0.bn2",
    )
    counts = ticket.kept_counts()
    for name, width in ticket.widths.items():  # nothing below 10 % unless the ticket names it
        assert counts[name] >= 0.1 * width or name in ticket.capped, name
    health = report["health"]
    assert health["zero_init_bns"] == list(ticket.zero_init_bns)
    assert health["capped_groups"] == ticket.capped
    assert health["chance_top1"] == pytest.approx(0.1, abs=0.01)
    assert health["dense_top1_at_ticket"] is not None
    assert "## Health" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("method", ["eb", "ns"])
def test_a_network_that_does_not_learn_gets_no_ticket(tmp_path, method) -> None:
    recipe = load_recipe(
        "quickstart",
        [
            f"prune.method={method}",
            "train.lr=1e-7",  # effectively lr 0: stays at chance
            "train.epochs=4",
            "train.milestones=[]",
            "data.train_subset=256",
            "prune.window=2",
            "prune.epsilon=1.0",  # the masks are stable: only the learning check can stop it
            *([] if method == "eb" else ["retrain.epochs=1"]),
        ],
    )
    with pytest.raises(UserError, match="did not learn in 4 search epochs") as caught:
        run_pipeline(recipe, tmp_path / method, progress=False)
    assert "train.lr (now 1e-07)" in str(caught.value) and "needed 28." in str(caught.value)
    assert not (tmp_path / method / "ticket.json").exists()


def test_the_cli_stops_a_non_learning_run_with_one_line(tmp_path, capsys) -> None:
    argv = ["prune", "--recipe", "quickstart", "--out", str(tmp_path / "r")]
    for pair in ("train.lr=1e-7", "train.epochs=3", "train.milestones=[]", "data.train_subset=128"):
        argv += ["--set", pair]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "did not learn" in lines[0] and "Traceback" not in out + err


def test_a_failed_run_says_so_and_shows_no_saving(tmp_path, capsys) -> None:
    run_dir = make_fake_run_dir(tmp_path / "broken", final_top1=0.12)
    report = write_report(run_dir)
    assert report["health"]["status"] == "failed"
    assert "near chance" in report["health"]["flags"][0]
    text = (run_dir / "report.md").read_text()
    assert "> **NOT A SUCCESS: final top-1 12.0% is near chance" in text
    assert "not a saving: the slim model failed its health check" in text
    print_summary(build_report(run_dir), run_dir)
    panel = capsys.readouterr().out
    assert "NOT A SUCCESS" in panel and "no saving" in panel and "x fewer" not in panel


def test_a_healthy_run_reports_ok_and_its_saving(tmp_path, capsys) -> None:
    run_dir = make_fake_run_dir(tmp_path / "fine", final_top1=0.9)
    report = write_report(run_dir)
    assert report["health"]["status"] == "ok" and report["health"]["flags"] == []
    print_summary(build_report(run_dir), run_dir)
    panel = capsys.readouterr().out
    assert "x fewer FLOPs" in panel and "health: ok" in panel


def test_compare_flags_each_row(tmp_path) -> None:
    rows = []
    for method, top1 in (("eb", 0.12), ("ns", 0.9)):
        run_dir = make_fake_run_dir(tmp_path / method, method=method, final_top1=top1)
        report = write_report(run_dir)
        rows.append(
            {
                "method": method,
                "ratio": 0.3,
                "run_dir": method,
                "test_top1": top1,
                "total_flops": report["cost"]["total_flops"],
                "seconds": 1.0,
                "params": 1,
                "macs": 1,
                "search_epochs": 1,
                "ticket_epoch": 1,
                "emerged": True,
                "health": report["health"]["status"],
                "health_flags": " | ".join(report["health"]["flags"]),
            }
        )
    result = write_compare(tmp_path / "cmp", "fake", rows)
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "p=0.3: failed" in text and "- eb p=0.3 (failed): final top-1 12.0% is near" in text
    assert "no saving (eb failed its health check)" in text
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == result

"""run/paths.py names the documented layout, and the run-directory contracts stay below the
pipeline: the report layer can read a run without importing what writes it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from ebcompress.run.paths import ComparePaths, RunPaths, run_dir_name

PACKAGE = Path(__file__).resolve().parents[2] / "ebcompress"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
CONTRACTS = ("paths", "state", "results", "lock")


def test_every_name_is_the_documented_one(tmp_path):
    paths = RunPaths(str(tmp_path))  # a str is taken too
    names = {
        paths.recipe: "recipe.yaml",
        paths.recipe_history: "recipe_history.jsonl",
        paths.state: "state.json",
        paths.lock: "run.lock",
        paths.metrics: "metrics.jsonl",
        paths.masks: "masks",
        paths.ticket: "ticket.json",
        paths.search_result: "search_result",
        paths.search_outcome: "search_result/outcome.json",
        paths.search_tensors: "search_result/tensors.safetensors",
        paths.checkpoint("retrain"): "checkpoints/retrain/last.pt",
        paths.model: "model",
        paths.report_json: "report.json",
        paths.report_md: "report.md",
        paths.plot("cost"): "plots/cost.png",
    }
    layout = ARCHITECTURE.read_text(encoding="utf-8").split("## Run directory")[1]
    for path, name in names.items():
        assert paths.relative(path) == name
        assert name.split("/")[0] in layout, f"{name} is not in docs/architecture.md"
    assert paths.root == tmp_path and RunPaths(tmp_path) == paths


def test_compare_folder_names():
    out = ComparePaths("runs/compare_quickstart")
    assert out.run("eb", 0.3) == Path("runs/compare_quickstart/eb_p30")
    assert run_dir_name("snip", 0.05) == "snip_p05"
    assert [p.name for p in (out.json, out.csv, out.md, out.plot)] == [
        "compare.json",
        "compare.csv",
        "compare.md",
        "accuracy_vs_flops.png",
    ]


def _ebcompress_imports(module: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("ebcompress.")}


def test_the_contract_modules_import_nothing_of_the_shell_but_each_other():
    allowed = {f"ebcompress.run.{name}" for name in CONTRACTS}
    for name in CONTRACTS:
        imports = _ebcompress_imports(PACKAGE / "run" / f"{name}.py")
        shell = {
            i for i in imports if i.split(".")[1] in ("run", "report", "methods", "recipe", "cli")
        }
        assert shell <= allowed, f"run/{name}.py imports {sorted(shell - allowed)}"
    assert _ebcompress_imports(PACKAGE / "run" / "__init__.py") == set()


def test_reading_a_report_does_not_import_the_pipeline():
    code = (
        "import sys, ebcompress.report.build, ebcompress.report.plots\n"
        "print(sorted(m for m in sys.modules if m.startswith(('ebcompress.run.pipeline', "
        "'ebcompress.run.compare', 'ebcompress.methods'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

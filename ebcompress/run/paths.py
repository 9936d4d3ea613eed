"""Every file and folder of a run directory (and of a compare folder), named once.

The layout is the one in docs/architecture.md. Everything in the shell that reads or writes
a run directory takes its paths from :class:`RunPaths`; the core and the engine are handed
plain paths by the shell (``RunPaths(run_dir).masks`` for ``MaskHistory.save``). This module
imports nothing from ebcompress, so any layer of the shell can use it without a cycle.

The engine's ``Trainer`` is given the run directory itself and places its checkpoints and
``metrics.jsonl`` where :attr:`RunPaths.metrics` and :meth:`RunPaths.checkpoint` say; a test
of the pipeline checks that the two agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Names relative to the run directory; report.json's "files" section lists some of them.
RECIPE = "recipe.yaml"
RECIPE_HISTORY = "recipe_history.jsonl"
STATE = "state.json"
LOCK = "run.lock"
METRICS = "metrics.jsonl"
MASKS = "masks"
TICKET = "ticket.json"
SEARCH_RESULT = "search_result"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pt"
MODEL = "model"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = "plots"
FORECAST = "forecast.json"


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run directory ``root``; nothing is created or checked."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def recipe(self) -> Path:
        """The fully resolved recipe the run was started (or last resumed) with."""
        return self.root / RECIPE

    @property
    def recipe_history(self) -> Path:
        """One JSON line per recipe change a resume accepted."""
        return self.root / RECIPE_HISTORY

    @property
    def state(self) -> Path:
        """The phase reached and, once finished, the results (:mod:`ebcompress.run.state`)."""
        return self.root / STATE

    @property
    def lock(self) -> Path:
        """Held by the one process writing the run (:mod:`ebcompress.run.lock`)."""
        return self.root / LOCK

    @property
    def metrics(self) -> Path:
        """One JSON line per epoch and phase."""
        return self.root / METRICS

    @property
    def masks(self) -> Path:
        """Early-Bird's per-epoch masks (a ``MaskHistory`` folder); only EB writes it."""
        return self.root / MASKS

    @property
    def ticket(self) -> Path:
        """The drawn ticket (``Ticket.save``)."""
        return self.root / TICKET

    @property
    def search_result(self) -> Path:
        """The search's result for retraining (:mod:`ebcompress.run.search_result`)."""
        return self.root / SEARCH_RESULT

    @property
    def search_outcome(self) -> Path:
        """The search result's JSON part, written last: its presence means complete."""
        return self.search_result / "outcome.json"

    @property
    def search_tensors(self) -> Path:
        """The search result's tensors: start weights and fixed weight masks."""
        return self.search_result / "tensors.safetensors"

    def checkpoint(self, phase: str) -> Path:
        """The newest checkpoint of ``phase`` (its predecessor is ``prev.pt`` beside it)."""
        return self.root / CHECKPOINTS / phase / LAST_CHECKPOINT

    @property
    def model(self) -> Path:
        """The slim model's bundle folder, with the other export formats beside its files."""
        return self.root / MODEL

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def forecast(self) -> Path:
        """The cost forecast made before the run (``ebcompress prune --plan``), if any."""
        return self.root / FORECAST

    def plot(self, name: str) -> Path:
        """``plots/<name>.png``; :func:`relative` gives the form report.md links to."""
        return self.plots / f"{name}.png"

    def relative(self, path: Path) -> str:
        """``path`` relative to the run directory, with forward slashes (for report links)."""
        return path.relative_to(self.root).as_posix()


def run_dir_name(method: str, ratio: float) -> str:
    """The folder of one (method, ratio) run inside a compare folder: ``eb_p30``."""
    return f"{method}_p{round(ratio * 100):02d}"


@dataclass(frozen=True)
class ComparePaths:
    """The files of a compare folder ``root``, beside its run directories; its shared phases
    live in ``root/shared`` unless ``shared_root`` names another folder (one that compares
    differing only in their ``retrain`` protocol can share)."""

    root: Path
    shared_root: Path

    def __init__(
        self, root: str | os.PathLike[str], shared_root: str | os.PathLike[str] | None = None
    ) -> None:
        object.__setattr__(self, "root", Path(root))
        object.__setattr__(
            self, "shared_root", Path(root, "shared") if shared_root is None else Path(shared_root)
        )

    def run(self, method: str, ratio: float) -> Path:
        return self.root / run_dir_name(method, ratio)

    def shared(self, name: str) -> Path:
        """``shared/<name>/``: a phase several runs share (:mod:`ebcompress.run.shared`)."""
        return self.shared_root / name

    @property
    def json(self) -> Path:
        return self.root / "compare.json"

    @property
    def csv(self) -> Path:
        return self.root / "compare.csv"

    @property
    def md(self) -> Path:
        return self.root / "compare.md"

    @property
    def plot(self) -> Path:
        """The accuracy-vs-FLOPs picture; compare.md links it by its bare name."""
        return self.root / "accuracy_vs_flops.png"

"""The pickle-free model bundle: ``config.json`` + ``structure.json`` + ``model.safetensors``.

A bundle is a folder that rebuilds a (slim) network without executing anyone's pickle:

* ``config.json`` - a :class:`ModelSpec` (architecture name, build kwargs, classes, input
  channels and size, normalisation mean/std) plus the bundle format and whether the model is slim;
* ``structure.json`` - the :class:`~ebcompress.channels.Ticket` (kept channels per prunable group),
  present only for slim models;
* ``model.safetensors`` - the state dict.

:func:`load` builds the dense architecture from the spec, replays the ticket with
:func:`~ebcompress.channels.slim` (deterministic given the ticket), and loads the weights strictly.
Anything that does not match - a missing file, a changed tensor shape, another architecture - is
a :class:`~ebcompress.errors.UserError` that names what differs.

A slim timm model stays a timm model: ``slim`` calls
:func:`~ebcompress.channels.timm_compat.sync_timm_attributes`, as torch-pruning rewrites the layers
but not plain integer attributes such as ``num_features``, which ``reset_classifier`` reads
to size the new head.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.errors import UserError

BUNDLE_FORMAT = 1
CONFIG_FILE = "config.json"
STRUCTURE_FILE = "structure.json"
WEIGHTS_FILE = "model.safetensors"
# How many differing tensor names an error message lists before it says "and N more".
_NAMES_SHOWN = 3


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the dense network and feed it: what ``config.json`` holds.

    ``arch`` is a :func:`ebcompress.models.build_model` name (``"vgg16_cifar"``,
    ``"timm:resnet18"``, ``"tv:resnet18"`` or a bare timm name); ``build_kwargs`` are its extra
    keyword arguments (e.g. ``width_mult``). ``input_size`` is ``(C, H, W)``.
    """

    arch: str
    build_kwargs: dict[str, Any]
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        clash = {"num_classes", "in_chans"} & set(self.build_kwargs)
        if clash:
            raise UserError(
                f"ModelSpec.build_kwargs must not repeat {sorted(clash)}; use the fields"
            )
        if len(self.input_size) != 3 or self.input_size[0] != self.in_chans:
            raise UserError(
                f"ModelSpec.input_size {tuple(self.input_size)} must be (C, H, W) with "
                f"C = in_chans = {self.in_chans}"
            )

    def build_dense(self) -> nn.Module:
        """The dense architecture with fresh random weights, in eval mode."""
        from ebcompress.models import build_model

        model = build_model(
            self.arch, num_classes=self.num_classes, in_chans=self.in_chans, **self.build_kwargs
        )
        return model.eval()

    def example_inputs(self, batch_size: int = 1, *, seed: int = 0) -> torch.Tensor:
        """A reproducible random batch of the spec's input size."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, *self.input_size, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "build_kwargs": dict(self.build_kwargs),
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model spec") -> ModelSpec:
        try:
            return cls(
                arch=str(data["arch"]),
                build_kwargs=dict(data.get("build_kwargs") or {}),
                num_classes=int(data["num_classes"]),
                in_chans=int(data["in_chans"]),
                input_size=tuple(int(v) for v in data["input_size"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
            )
        except KeyError as exc:
            raise UserError(f"{where}: field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: not a valid model spec ({exc})") from None


# --------------------------------------------------------------------------- writing
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def export_bundle(
    model: nn.Module, folder: str | os.PathLike[str], *, spec: ModelSpec, ticket: Ticket | None
) -> Path:
    """Write ``model`` as a bundle into ``folder`` and return the folder.

    ``ticket`` is the ticket ``model`` was slimmed with, or ``None`` for a dense model. The
    caller vouches that ``slim(spec.build_dense(), ticket)`` has ``model``'s shapes;
    :func:`load` (or ``export(..., verify=True)``) checks it. Each file is replaced atomically
    and ``config.json`` last, so an interrupted write never looks like a complete bundle.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_tmp = folder / (WEIGHTS_FILE + ".tmp")
    # save_model de-duplicates shared tensors and makes channels_last tensors contiguous.
    save_model(model, str(weights_tmp), metadata={"format": "pt"})
    os.replace(weights_tmp, folder / WEIGHTS_FILE)
    structure = folder / STRUCTURE_FILE
    if ticket is not None:
        _write_atomic(structure, json.dumps(ticket.to_dict(), indent=1) + "\n")
    elif structure.exists():
        structure.unlink()  # a stale ticket would slim the dense model on load
    config = {
        "format": BUNDLE_FORMAT,
        **spec.to_dict(),
        "slim": ticket is not None,
        "fingerprint": ticket.fingerprint if ticket is not None else None,
        "torch_version": torch.__version__.split("+")[0],
    }
    _write_atomic(folder / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
    return folder


# --------------------------------------------------------------------------- reading
def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """The bundle folder for ``path``: a bundle itself, its ``config.json``, or a run directory."""
    path = Path(path)
    if path.is_file() and path.name == CONFIG_FILE:
        return path.parent
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist; give a bundle folder or a run directory")
    raise UserError(
        f"{str(path)!r} is neither a bundle (no {CONFIG_FILE}) nor a run directory "
        f"(no model/{CONFIG_FILE}); export one with `ebcompress export` or re-run the pipeline"
    )


def read_bundle(path: str | os.PathLike[str]) -> tuple[Path, ModelSpec, Ticket | None]:
    """Read and check a bundle's JSON files without building anything."""
    folder = resolve_bundle(path)
    config_path = folder / CONFIG_FILE
    where = f"bundle {str(folder)!r}: {CONFIG_FILE}"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{where}: unsupported bundle format {found!r} (expected {BUNDLE_FORMAT})")
    spec = ModelSpec.from_dict(config, where=where)
    for name in (WEIGHTS_FILE, STRUCTURE_FILE) if config.get("slim") else (WEIGHTS_FILE,):
        if not (folder / name).is_file():
            raise UserError(f"bundle {str(folder)!r}: {name} is missing; re-export the bundle")
    ticket = Ticket.load(folder / STRUCTURE_FILE) if config.get("slim") else None
    if ticket is not None and config.get("fingerprint") not in (None, ticket.fingerprint):
        raise UserError(
            f"bundle {str(folder)!r}: {STRUCTURE_FILE} has fingerprint {ticket.fingerprint}, "
            f"{CONFIG_FILE} records {config['fingerprint']}; the files come from different exports"
        )
    return folder, spec, ticket


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _check_weights(model: nn.Module, weights: Path) -> None:
    """Raise a UserError naming the first tensors whose names or shapes differ from ``model``."""
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{str(weights)!r} is not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    reshaped = [
        f"{key} {list(shape)} (structure gives {list(expected[key].shape)})"
        for key, shape in stored.items()
        if key in expected and tuple(expected[key].shape) != shape
    ]
    if reshaped:
        raise UserError(
            f"{str(weights)!r}: tensor shapes differ from the structure: {_listing(reshaped)}"
        )
    unexpected = [key for key in stored if key not in expected]
    # save_model drops all but one name of tensors that share memory; those are not missing.
    present = {expected[key].data_ptr() for key in stored if key in expected}
    missing = [k for k, v in expected.items() if k not in stored and v.data_ptr() not in present]
    if unexpected or missing:
        parts = [f"unexpected {_listing(unexpected)}"] if unexpected else []
        parts += [f"missing {_listing(missing)}"] if missing else []
        raise UserError(
            f"{str(weights)!r} does not fit the architecture in {CONFIG_FILE}: {'; '.join(parts)}"
        )


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a bundled model (a bundle folder or a run directory) in eval mode.

    Builds ``spec.arch`` dense, replays ``structure.json`` with :func:`~ebcompress.channels.slim`
    (passing the ticket's ``ignored_layers`` names, or for bundles written before that field
    existed its ``extra["ignored_layers"]``, as the layers kept dense), restores timm's width
    attributes, then loads ``model.safetensors`` strictly. Never unpickles.
    """
    folder, spec, ticket = read_bundle(path)
    try:
        model = spec.build_dense()
    except UserError as exc:
        raise UserError(f"bundle {str(folder)!r}: {exc}") from None
    example = spec.example_inputs()
    if ticket is not None:
        try:
            # A ticket drawn with layers kept dense records their names; slim must skip them too.
            # Older bundles kept them (if at all) in the untyped extra dict.
            ignored = ticket.ignored_layers or tuple(ticket.extra.get("ignored_layers") or ())
            model = slim(model, ticket, example, graph_ignored_layers=ignored)
        except (UserError, ValueError, KeyError) as exc:
            drawn_for = f" (drawn for {ticket.model_name!r})" if ticket.model_name else ""
            raise UserError(
                f"bundle {str(folder)!r}: {STRUCTURE_FILE}{drawn_for} does not fit arch "
                f"{spec.arch!r} from {CONFIG_FILE}: {exc}"
            ) from None
    _check_weights(model, folder / WEIGHTS_FILE)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    return model.to(map_location).eval()

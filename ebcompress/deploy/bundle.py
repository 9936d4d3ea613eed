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

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from ebcompress.atomic import atomic_path, write_text_atomic
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.checks import check_instance, check_int, check_number, check_path, check_runs
from ebcompress.errors import UserError
from ebcompress.run.paths import MODEL, RunPaths

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
    keyword arguments (e.g. ``width_mult``). ``input_size`` is ``(C, H, W)``; ``mean`` and
    ``std`` hold one value or one per channel. Checked on construction: a wrong type is a
    TypeError, a value that cannot work a UserError, each naming the field.
    """

    arch: str
    build_kwargs: dict[str, Any]
    num_classes: int
    in_chans: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        check_instance(self.arch, str, "ModelSpec.arch")
        check_instance(self.build_kwargs, dict, "ModelSpec.build_kwargs")
        # frozen: the checked values are stored as plain ints, floats and tuples (JSON-safe)
        for name in ("num_classes", "in_chans"):
            object.__setattr__(self, name, check_int(getattr(self, name), f"ModelSpec.{name}"))
        for name, check in (
            ("input_size", check_int),
            ("mean", check_number),
            ("std", check_number),
        ):
            values = getattr(self, name)
            check_instance(values, (list, tuple), f"ModelSpec.{name}")
            object.__setattr__(
                self, name, tuple(check(v, f"each ModelSpec.{name} entry") for v in values)
            )
        clash = {"num_classes", "in_chans"} & set(self.build_kwargs)
        if clash:
            raise UserError(
                f"ModelSpec.build_kwargs must not repeat {sorted(clash)}; use the fields"
            )
        if (
            len(self.input_size) != 3
            or self.input_size[0] != self.in_chans
            or min(self.input_size) < 1
        ):
            raise UserError(
                f"ModelSpec.input_size {tuple(self.input_size)} must be (C, H, W) with "
                f"C = in_chans = {self.in_chans} and positive sizes"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.in_chans) or not all(map(math.isfinite, values)):
                raise UserError(
                    f"ModelSpec.{name} {list(values)} must hold 1 or in_chans = {self.in_chans} "
                    "finite values"
                )
        if min(self.std) <= 0:
            raise UserError(f"ModelSpec.std {list(self.std)} must be positive (it divides)")

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
        """Inverse of :meth:`to_dict`; a missing or mistyped field is a UserError naming it
        and ``where``."""
        try:
            kwargs = data.get("build_kwargs")
            return cls(
                arch=data["arch"],
                build_kwargs={} if kwargs is None else kwargs,
                **{
                    name: data[name]
                    for name in _SPEC_FIELDS
                    if name not in ("arch", "build_kwargs")
                },
            )
        except KeyError as exc:
            raise UserError(f"{where}: field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError, UserError) as exc:
            raise UserError(f"{where}: not a valid model spec ({exc})") from None


_SPEC_FIELDS = tuple(field.name for field in fields(ModelSpec))
# Everything config.json holds: the spec, and what export_bundle adds to it.
_CONFIG_FIELDS = frozenset(
    {*_SPEC_FIELDS, "format", "slim", "fingerprint", "torch_version", "weights_sha256"}
)


# --------------------------------------------------------------------------- writing
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
    with atomic_path(folder / WEIGHTS_FILE) as weights_tmp:
        # save_model de-duplicates shared tensors and makes channels_last tensors contiguous.
        save_model(model, str(weights_tmp), metadata={"format": "pt"})
    structure = folder / STRUCTURE_FILE
    if ticket is not None:
        write_text_atomic(structure, json.dumps(ticket.to_dict(), indent=1) + "\n")
    elif structure.exists():
        structure.unlink()  # a stale ticket would slim the dense model on load
    config = {
        "format": BUNDLE_FORMAT,
        **spec.to_dict(),
        "slim": ticket is not None,
        "fingerprint": ticket.fingerprint if ticket is not None else None,
        "torch_version": torch.__version__.split("+")[0],
        # safetensors has no checksum of its own: without this an altered weight loads silently.
        "weights_sha256": _sha256(folder / WEIGHTS_FILE),
    }
    write_text_atomic(folder / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading
def resolve_bundle(path: str | os.PathLike[str]) -> Path:
    """The bundle folder for ``path``: a bundle itself, its ``config.json``, or a run directory."""
    path = check_path(path, "bundle path")
    if path.is_file() and path.name == CONFIG_FILE:
        return path.parent
    for candidate in (path, RunPaths(path).model):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist; give a bundle folder or a run directory")
    raise UserError(
        f"{str(path)!r} is neither a bundle (no {CONFIG_FILE}) nor a run directory "
        f"(no {MODEL}/{CONFIG_FILE}); export one with `ebcompress export` or re-run the pipeline"
    )


def read_bundle(path: str | os.PathLike[str]) -> tuple[Path, ModelSpec, Ticket | None]:
    """Read and check a bundle's JSON files without building anything."""
    folder, spec, ticket, _ = _read_bundle(path)
    return folder, spec, ticket


def _read_bundle(
    path: str | os.PathLike[str],
) -> tuple[Path, ModelSpec, Ticket | None, str | None]:
    """:func:`read_bundle`, plus the weights' recorded sha256 (None in older bundles)."""
    folder = resolve_bundle(path)
    config_path = folder / CONFIG_FILE
    where = f"bundle {str(folder)!r}: {CONFIG_FILE}"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{where} is not valid JSON (line {exc.lineno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{where} cannot be read as text ({exc}); re-export the bundle") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UserError(f"{where}: unsupported bundle format {found!r} (expected {BUNDLE_FORMAT})")
    unknown = sorted(set(config) - _CONFIG_FIELDS)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}; re-export the bundle")
    if not isinstance(config.get("slim", False), bool):
        raise UserError(f"{where}: slim must be true or false, not {config['slim']!r}")
    checksum = config.get("weights_sha256")  # absent in bundles written before it existed
    if checksum is not None and not (
        isinstance(checksum, str) and re.fullmatch(r"[0-9a-f]{64}", checksum)
    ):
        raise UserError(f"{where}: weights_sha256 {checksum!r} is not a sha256 hex digest")
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
    return folder, spec, ticket, checksum


def _check_checksum(folder: Path, recorded: str | None) -> None:
    """UserError unless model.safetensors has the digest config.json recorded at export (a
    file whose names and shapes fit can still hold altered values)."""
    if recorded is not None and _sha256(folder / WEIGHTS_FILE) != recorded:
        raise UserError(
            f"bundle {str(folder)!r}: {WEIGHTS_FILE} does not match the weights_sha256 in "
            f"{CONFIG_FILE} (altered or damaged since the export); re-export the bundle"
        )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


def _kind(dtype: torch.dtype | str) -> str:
    """A torch dtype's or a safetensors dtype name's kind: floating point, integer or bool."""
    name = str(dtype).removeprefix("torch.").upper()
    if name == "BOOL":
        return "bool"
    return "floating point" if name.startswith(("F", "BF")) else "integer"


def _check_weights(model: nn.Module, weights: Path) -> None:
    """Raise a UserError naming the first tensors whose names, shapes or kinds of dtype
    (floating point, integer, bool) differ from ``model``. Floating-point precisions may
    differ: a half-precision export loads into the float32 rebuild, as ``load_model`` casts."""
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            slices = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118
            stored = {key: tuple(part.get_shape()) for key, part in slices.items()}
            kinds = {key: _kind(part.get_dtype()) for key, part in slices.items()}
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
    retyped = [
        f"{key} {kinds[key]} (the model's is {_kind(expected[key].dtype)})"
        for key in stored
        if key in expected and kinds[key] != _kind(expected[key].dtype)
    ]
    if retyped:
        raise UserError(
            f"{str(weights)!r}: tensor dtypes differ from the model: {_listing(retyped)}"
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
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError):
        raise UserError(f"load: map_location {map_location!r} is not a torch device") from None
    folder, spec, ticket, checksum = _read_bundle(path)
    try:
        model = spec.build_dense()
    except UserError as exc:
        raise UserError(f"bundle {str(folder)!r}: {exc}") from None
    example = spec.example_inputs()
    check_runs(
        model,
        example,
        f"bundle {str(folder)!r}: a batch of {CONFIG_FILE}'s input_size",
        fix=f"give input_size in {CONFIG_FILE} as the model takes it, or re-export the bundle",
    )
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
    _check_checksum(folder, checksum)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    return model.to(device).eval()

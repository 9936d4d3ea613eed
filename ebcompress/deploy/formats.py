"""Export a model to a deployable format and prove that the file computes what PyTorch computes.

Formats:

* ``bundle`` (default) - the pickle-free folder of :mod:`ebcompress.deploy.bundle`, reloaded with
  :func:`ebcompress.deploy.bundle.load`; its :class:`ModelSpec` is inferred when none is given
  (:mod:`ebcompress.deploy.spec_inference`);
* ``onnx`` - ``torch.onnx.export`` (the TorchScript-based exporter first, the torch.export-based
  one if that fails), checked with onnxruntime;
* ``pt2`` - ``torch.export.export`` + ``torch.export.save``, checked with ``torch.export.load``;
* ``torchscript`` - ``torch.jit.trace`` (``torch.jit.script`` if tracing fails), checked with
  ``torch.jit.load``.

Every export is verified unless ``verify=False``: the written file is reloaded and run on a
random batch of 2 (and, with a dynamic batch axis, a batch of 1); its outputs must match the
PyTorch model's within :data:`TOLERANCE`, scaled by the output magnitude when that exceeds 1.
A file that fails is deleted and :class:`ExportError` says by how much it missed. Note that
``pt2`` and ``torchscript`` files are themselves loaded with pickle by PyTorch: ship them to
runtimes, but load files of unknown origin only as bundles.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ebcompress.atomic import atomic_path
from ebcompress.channels.groups import out_width
from ebcompress.channels.ticket import Ticket
from ebcompress.channels.timm_compat import sync_timm_attributes
from ebcompress.checks import check_batch, check_instance, check_module, check_path, check_runs
from ebcompress.deploy.bundle import ModelSpec, export_bundle, load
from ebcompress.deploy.spec_inference import infer_spec
from ebcompress.errors import UserError
from ebcompress.registry import Registry

# The bundle's names are re-exported: `from ebcompress.deploy.formats import load` works.
__all__ = [
    "FORMATS",
    "ExportError",
    "ExportFormat",
    "ModelSpec",
    "default_path",
    "export",
    "export_bundle",
    "infer_spec",
    "load",
    "sync_timm_attributes",
    "verify_outputs",
]

TOLERANCE = 1e-4
VERIFY_BATCH = 2
_VERIFY_SEED = 1234
# Exporter messages can run to pages; the one-line error keeps their start.
_DETAIL_CHARS = 300

Runner = Callable[[torch.Tensor], object]


class ExportError(UserError):
    """The model could not be exported, or the exported file does not reproduce PyTorch."""


def _detail(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + " ..."


@contextmanager
def _quiet_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no exporter deprecation chatter for the duration; the mode is restored."""
    was_training = model.training
    model.eval()
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        try:
            yield
        finally:
            model.train(was_training)


def _tensors(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    raise TypeError(f"cannot compare a model output of type {type(output).__name__}")


@torch.no_grad()
def verify_outputs(
    model: nn.Module, run: Runner, batches: list[torch.Tensor], *, what: str
) -> float:
    """Run ``model`` and ``run`` on each batch; raise :class:`ExportError` past the tolerance.

    Returns the largest absolute difference seen. ``run`` receives CPU tensors.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    worst = 0.0
    for batch in batches:
        expected = [t.detach().float().cpu() for t in _tensors(model(batch.to(device)))]
        try:
            produced = [torch.as_tensor(t).detach().float().cpu() for t in _tensors(run(batch))]
        except Exception as exc:  # any runtime failure is a failed verification
            raise ExportError(f"{what} fails on a batch of {len(batch)}: {_detail(exc)}") from None
        shapes = [tuple(t.shape) for t in expected], [tuple(t.shape) for t in produced]
        if shapes[0] != shapes[1]:
            raise ExportError(
                f"{what} returns shapes {shapes[1]}, PyTorch {shapes[0]} on a batch of {len(batch)}"
            )
        for ref, out in zip(expected, produced, strict=True):
            diff = float((ref - out).abs().max()) if ref.numel() else 0.0
            allowed = TOLERANCE * max(1.0, float(ref.abs().max()) if ref.numel() else 0.0)
            if not diff <= allowed:  # also catches NaN
                raise ExportError(
                    f"{what} differs from PyTorch by {diff:.3g} (tolerance {allowed:.3g}) on a "
                    f"random batch of {len(batch)}; the export is not faithful"
                )
            worst = max(worst, diff)
    return worst


def _verification_batches(example: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(_VERIFY_SEED)
    sizes = [len(example)] + ([1 if len(example) != 1 else VERIFY_BATCH] if dynamic_batch else [])
    return [torch.randn(n, *example.shape[1:], generator=generator) for n in sizes]


# --------------------------------------------------------------------------- writers
def _write_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool
) -> Runner:
    import onnxruntime as ort

    names = {"input_names": ["input"], "output_names": ["output"]}
    try:
        # The TorchScript-based exporter handles more timm models than the dynamo one today.
        axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=opset, dynamic_axes=axes,
            **names,
        )  # fmt: skip
    except Exception as legacy_exc:  # exporters raise anything; fall back, then report both
        shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
        try:
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, opset_version=opset,
                dynamic_shapes=shapes, external_data=False, verbose=False, **names,
            )  # fmt: skip
        except Exception as dynamo_exc:
            raise ExportError(
                f"ONNX export failed: legacy exporter: {_detail(legacy_exc)}; "
                f"dynamo exporter: {_detail(dynamo_exc)}"
            ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda batch: [
        torch.from_numpy(a) for a in session.run(None, {input_name: batch.numpy()})
    ]


def _write_pt2(
    model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool
) -> Runner:
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    except Exception as exc:
        hint = "; try --static-batch" if dynamic_batch else ""
        raise ExportError(f"torch.export failed: {_detail(exc)}{hint}") from None
    reloaded = torch.export.load(str(path)).module()
    return lambda batch: reloaded(batch.to(example.device))


def _write_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool
) -> Runner:
    try:
        # Tracing covers models with Python control flow that script rejects; verification
        # below catches a trace that baked in something input-dependent.
        compiled = torch.jit.trace(model, example, check_trace=False)
    except Exception as trace_exc:
        try:
            compiled = torch.jit.script(model)
        except Exception as script_exc:
            raise ExportError(
                f"TorchScript export failed: trace: {_detail(trace_exc)}; "
                f"script: {_detail(script_exc)}"
            ) from None
    compiled.save(str(path))
    reloaded = torch.jit.load(str(path), map_location=example.device)
    return lambda batch: reloaded(batch.to(example.device))


@dataclass(frozen=True)
class ExportFormat:
    """A format :func:`export` writes: ``file_name`` is its default inside a bundle folder, and
    ``write(model, example, path, *, opset, dynamic_batch)`` writes ``path`` and returns what
    runs the written file. Both are None for the bundle, a folder :func:`export_bundle` fills."""

    file_name: str | None = None
    write: Callable[..., Runner] | None = None


#: Export format name -> :class:`ExportFormat`, in the order listings show.
FORMATS: Registry[ExportFormat] = Registry("export format")
FORMATS.register("bundle", ExportFormat())
FORMATS.register("onnx", ExportFormat("model.onnx", _write_onnx))
FORMATS.register("torchscript", ExportFormat("model.torchscript.pt", _write_torchscript))
FORMATS.register("pt2", ExportFormat("model.pt2", _write_pt2))


# --------------------------------------------------------------------------- entry point
def default_path(folder: str | os.PathLike[str], format: str) -> Path:
    """Where ``format`` goes by default inside a bundle folder."""
    file_name = FORMATS.get(format).file_name
    return Path(folder) if file_name is None else Path(folder) / file_name


def _check_arguments(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: str,
    spec: ModelSpec | None,
    ticket: Ticket | None,
    example_inputs: torch.Tensor | None,
) -> Path:
    """:func:`export`'s arguments checked before anything is written; returns the path.

    A wrong type is a TypeError, a value that cannot work a UserError, each naming the
    argument: a bundle needs a folder and the other formats a file, the example inputs must
    run through the model, and every group of the ticket must be a layer of the model as wide
    as the ticket keeps it (the model is the slimmed one).
    """
    check_module(model, "export: model")
    target = check_path(path, "export: path")
    check_instance(format, str, "export: format", how=", ".join(FORMATS))
    FORMATS.get(format)  # a UserError listing the formats
    if spec is not None:
        check_instance(spec, ModelSpec, "export: spec", how="eb.ModelSpec(arch=..., ...)")
    if example_inputs is not None:
        check_batch(example_inputs, "export: example_inputs")
        check_runs(model, example_inputs, "export: example_inputs")
    if format == "bundle" and target.exists() and not target.is_dir():
        raise UserError(
            f"export: path {str(target)!r} is a file, but a bundle is a folder; give a folder path"
        )
    if format != "bundle" and target.is_dir():
        raise UserError(
            f"export: path {str(target)!r} is a folder; give a file path such as "
            f"{str(default_path(target, format))!r}"
        )
    blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"export: path {str(target)!r} lies inside {str(blocker)!r}, a file")
    if ticket is not None and format == "bundle":
        check_instance(
            ticket, Ticket, "export: ticket", how="the ticket the model was slimmed with"
        )
        layers = dict(model.named_modules())
        for name, kept in ticket.kept.items():
            width = out_width(layers[name]) if name in layers else None
            if width != len(kept):
                found = "is not a layer of the model" if width is None else f"is {width} wide"
                raise UserError(
                    f"export: the ticket's group {name!r} keeps {len(kept)} channels but {found} "
                    "in the model; pass the ticket the model was slimmed with (ticket=None for a "
                    "dense model)"
                )
    return target


def _export_bundle(
    model: nn.Module,
    folder: Path,
    *,
    spec: ModelSpec | None,
    ticket: Ticket | None,
    example_inputs: torch.Tensor | None,
    verify: bool,
) -> Path:
    if spec is None:
        # Checked before anything is written: a bundle must rebuild, verify=False or not.
        spec = infer_spec(model, ticket=ticket, example_inputs=example_inputs)
    export_bundle(model, folder, spec=spec, ticket=ticket)
    if verify:
        try:
            reloaded = load(folder)
        except UserError as exc:
            raise ExportError(
                f"export: the bundle written does not rebuild the model ({exc}); pass the "
                "ticket the model was slimmed with (None for a dense model) and the spec of "
                "its dense architecture"
            ) from None
        batches = _verification_batches(spec.example_inputs(VERIFY_BATCH), dynamic_batch=True)
        with _quiet_eval(model):
            verify_outputs(model, reloaded, batches, what=f"bundle {str(folder)!r}")
    return folder


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: str = "bundle",
    spec: ModelSpec | None = None,
    ticket: Ticket | None = None,
    example_inputs: torch.Tensor | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    verify: bool = True,
) -> Path:
    """Write ``model`` to ``path`` as ``format`` and (by default) verify the written file.

    ``bundle`` takes the ``ticket`` the model was slimmed with (none for a dense model) and
    the ``spec`` that rebuilds the dense architecture; without ``spec`` it is inferred from a
    timm, torchvision or :func:`ebcompress.build_model` model and checked to rebuild ``model``
    (:func:`ebcompress.deploy.spec_inference.infer_spec`; a field it cannot infer is a UserError
    asking for ``spec=ModelSpec(...)``). The other formats need ``example_inputs`` or a
    ``spec`` to make a batch of :data:`VERIFY_BATCH`. ``dynamic_batch`` gives ONNX and pt2
    files a free batch axis.
    Non-bundle files are written under a temporary name and only renamed to ``path`` once
    verified, so ``path`` never holds an unverified export. Returns ``path``.
    """
    path = _check_arguments(model, path, format, spec, ticket, example_inputs)
    if format == "bundle":
        return _export_bundle(
            model, path, spec=spec, ticket=ticket, example_inputs=example_inputs, verify=verify
        )
    if example_inputs is None:
        if spec is None:
            raise UserError(
                f"export(format={format!r}) needs example_inputs or spec for the input size"
            )
        example_inputs = spec.example_inputs(VERIFY_BATCH)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = example_inputs.to(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writers pick or check the format by the suffix (torch.export.save wants .pt2)
    with atomic_path(path, keep_suffix=True) as partial, _quiet_eval(model):
        write = FORMATS.get(format).write
        run = write(model, example, partial, opset=opset, dynamic_batch=dynamic_batch)
        if verify:
            batches = _verification_batches(example_inputs.cpu(), dynamic_batch)
            verify_outputs(model, run, batches, what=f"{format} export {str(path)!r}")
    return path

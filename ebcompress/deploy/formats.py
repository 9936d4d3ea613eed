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
from pathlib import Path

import torch
from torch import nn

from ebcompress.channels.ticket import Ticket
from ebcompress.channels.timm_compat import sync_timm_attributes
from ebcompress.deploy.bundle import ModelSpec, export_bundle, load
from ebcompress.deploy.spec_inference import infer_spec
from ebcompress.errors import UserError

# The bundle's names are re-exported: `from ebcompress.deploy.formats import load` works.
__all__ = [
    "FORMATS",
    "ExportError",
    "ModelSpec",
    "default_path",
    "export",
    "export_bundle",
    "infer_spec",
    "load",
    "sync_timm_attributes",
    "verify_outputs",
]

FORMATS = ("bundle", "onnx", "torchscript", "pt2")
# File names inside a bundle folder when the caller gives a folder or no path.
DEFAULT_FILE_NAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "pt2": "model.pt2",
}
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
    model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool
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


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Runner:
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


# --------------------------------------------------------------------------- entry point
def default_path(folder: str | os.PathLike[str], format: str) -> Path:
    """Where ``format`` goes by default inside a bundle folder."""
    _check_format(format)
    return Path(folder) if format == "bundle" else Path(folder) / DEFAULT_FILE_NAMES[format]


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise UserError(f"export format {format!r} is not one of {', '.join(FORMATS)}")


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
        batches = _verification_batches(spec.example_inputs(VERIFY_BATCH), dynamic_batch=True)
        with _quiet_eval(model):
            verify_outputs(model, load(folder), batches, what=f"bundle {str(folder)!r}")
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
    _check_format(format)
    path = Path(path)
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
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        with _quiet_eval(model):
            if format == "onnx":
                run = _write_onnx(model, example, partial, opset=opset, dynamic_batch=dynamic_batch)
            elif format == "pt2":
                run = _write_pt2(model, example, partial, dynamic_batch=dynamic_batch)
            else:
                run = _write_torchscript(model, example, partial)
            if verify:
                batches = _verification_batches(example_inputs.cpu(), dynamic_batch)
                verify_outputs(model, run, batches, what=f"{format} export {str(path)!r}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path

"""Infer the :class:`~ebcompress.deploy.bundle.ModelSpec` of a model, and prove the guess.

``export(slim_model, path, ticket=ticket)`` without ``spec=`` needs to know how to rebuild the
dense network the bundle replays the ticket on. :func:`infer_spec` reads it off the model:

* a model built by :func:`ebcompress.models.build_model` records its name and keyword
  arguments (so ``build_model("vgg16_cifar", width_mult=0.25)`` is rebuilt exactly);
* a timm model carries ``pretrained_cfg`` (``default_cfg``): its ``architecture``,
  ``input_size``, ``mean`` and ``std``;
* a torchvision classification model is matched by class and layout against the builders of
  ``torchvision.models`` (``ResNet`` could be ``resnet18`` ... ``wide_resnet101_2``), with
  ImageNet's mean and std.

``num_classes`` comes from the classifier (never pruned), ``in_chans`` from the input shape
or the first convolution (whose inputs are never pruned either), ``input_size`` from the
example input, the shape the ticket was drawn with, or timm's cfg, in that order. The model
passed is usually the SLIM one, so its widths are not the architecture's: the ticket's dense
widths stand in for them.

A guess is only returned once checked: the spec must build a dense model that runs at
``input_size``, that the ticket fits, whose slimmed copy has the model's tensor shapes and
computes the model's outputs with the model's weights. Anything else is a one-line
:class:`~ebcompress.errors.UserError` naming the ModelSpec field and asking for ``spec=``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ebcompress.channels.groups import modes_preserved, out_width
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.deploy.bundle import ModelSpec
from ebcompress.errors import UserError

__all__ = ["BUILD_RECORD", "IMAGENET_MEAN", "IMAGENET_STD", "check_spec", "infer_spec"]

#: Attribute :func:`ebcompress.models.build_model` sets on what it builds:
#: ``{"arch": name, "build_kwargs": kwargs}`` (a plain attribute, so copies and slims keep it).
BUILD_RECORD = "_ebcompress_build"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Output agreement between the model and its rebuild (same weights, possibly other devices).
_TOLERANCE = 1e-4
_ASK = "pass spec=ModelSpec(...)"


def _fail(what: str) -> UserError:
    return UserError(f"cannot infer the model spec: {what}; {_ASK}")


def infer_spec(
    model: nn.Module,
    *,
    ticket: Ticket | None = None,
    example_inputs: torch.Tensor | None = None,
) -> ModelSpec:
    """The ModelSpec that rebuilds ``model`` (slimmed with ``ticket``, or dense without one).

    See the module docstring for where each field comes from. The result is checked with
    :func:`check_spec` before it is returned; a field that cannot be read or does not rebuild
    ``model`` is a UserError naming it. ``model`` is not modified (its modes are restored).
    """
    record = getattr(model, BUILD_RECORD, None)
    cfg = _timm_cfg(model)
    if isinstance(record, dict) and isinstance(record.get("arch"), str):
        arch, build_kwargs = record["arch"], dict(record.get("build_kwargs") or {})
    elif cfg.get("architecture"):
        arch, build_kwargs = f"timm:{cfg['architecture']}", {}
    elif type(model).__module__.startswith("torchvision.models"):
        arch, build_kwargs = _torchvision_arch(model, ticket), {}
    else:
        raise _fail(
            f"ModelSpec.arch: a {type(model).__name__} was not built by timm, torchvision or "
            "ebcompress.build_model"
        )
    try:
        json.dumps(build_kwargs)
    except TypeError:
        raise _fail(f"ModelSpec.build_kwargs {build_kwargs!r} are not JSON values") from None
    in_chans = _in_chans(model, cfg, _input_shape(ticket, example_inputs))
    input_size = _input_size(cfg, _input_shape(ticket, example_inputs), in_chans)
    torchvision_stats = arch.startswith("tv:") or not cfg
    mean = IMAGENET_MEAN if torchvision_stats else tuple(cfg.get("mean") or IMAGENET_MEAN)
    std = IMAGENET_STD if torchvision_stats else tuple(cfg.get("std") or IMAGENET_STD)
    try:
        spec = ModelSpec(
            arch=arch,
            build_kwargs=build_kwargs,
            num_classes=_num_classes(model),
            in_chans=in_chans,
            input_size=input_size,
            mean=_per_channel(mean, in_chans),
            std=_per_channel(std, in_chans),
        )
    except UserError as exc:
        raise _fail(str(exc)) from None
    check_spec(spec, model, ticket)
    return spec


def check_spec(spec: ModelSpec, model: nn.Module, ticket: Ticket | None) -> None:
    """Raise a UserError naming the ModelSpec field unless ``spec`` rebuilds ``model``.

    Rebuilt means: ``spec.build_dense()`` runs on ``spec.example_inputs()``, the ticket (if
    any) slims it, the result has ``model``'s tensor names and shapes, and with ``model``'s
    weights loaded it computes ``model``'s outputs in eval mode.
    """
    where = f"ModelSpec.arch {spec.arch!r}" + (
        f" with build_kwargs {spec.build_kwargs}" if spec.build_kwargs else ""
    )
    try:
        dense = spec.build_dense()
    except UserError as exc:
        raise _fail(f"{where} cannot be built ({exc})") from None
    example = spec.example_inputs()
    try:
        with torch.no_grad():
            dense(example)
    except Exception as exc:  # any op may reject the input size, with any exception type
        raise _fail(
            f"ModelSpec.input_size {spec.input_size} does not run through {spec.arch!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    rebuilt = dense
    if ticket is not None:
        try:
            rebuilt = slim(dense, ticket, example).eval()
        except UserError as exc:
            raise _fail(f"the ticket does not fit the dense model {where} builds ({exc})") from None
    _check_shapes(spec, model, rebuilt, where, slim_hint=ticket is None)
    _check_outputs(model, rebuilt, example, where)


def _check_shapes(
    spec: ModelSpec, model: nn.Module, rebuilt: nn.Module, where: str, *, slim_hint: bool
) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if expected.keys() != found.keys():
        odd = sorted(expected.keys() ^ found.keys())[0]
        side = "the model" if odd in expected else "the rebuild"
        raise _fail(f"{where} has other layers than the model ({odd!r} is only in {side})")
    differing = [k for k in expected if expected[k] != found[k]]
    if not differing:
        return
    key = differing[0]
    shapes = f"{key} is {list(expected[key])} in the model, {list(found[key])} rebuilt"
    head = _head_names(model)
    first = _first_conv_name(model, {})
    if all(k.rpartition(".")[0] in head for k in differing):
        raise _fail(f"ModelSpec.num_classes {spec.num_classes} does not fit the head ({shapes})")
    if key == f"{first}.weight" and expected[key][1] != found[key][1]:
        raise _fail(f"ModelSpec.in_chans {spec.in_chans} does not fit the first conv ({shapes})")
    hint = " (a slim model needs its ticket=)" if slim_hint else ""
    raise _fail(f"{where} builds other widths than the model's ({shapes}){hint}")


def _check_outputs(model: nn.Module, rebuilt: nn.Module, example: torch.Tensor, where: str) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.to(device)
    with modes_preserved(model), torch.no_grad():
        model.eval()
        expected, found = model(example.to(device)), rebuilt(example.to(device))
    if not (isinstance(expected, torch.Tensor) and isinstance(found, torch.Tensor)):
        return  # structured outputs: the export's own verification compares them
    allowed = _TOLERANCE * max(1.0, float(expected.abs().max()))
    if expected.shape != found.shape or not float((expected - found).abs().max()) <= allowed:
        raise _fail(
            f"{where} with the model's weights computes other outputs (a constructor argument "
            "such as global_pool that the model does not record?)"
        )


# --------------------------------------------------------------------------- fields
def _timm_cfg(model: nn.Module) -> dict[str, Any]:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg:
            return cfg
    return {}


def _input_shape(ticket: Ticket | None, example_inputs: torch.Tensor | None) -> tuple[int, ...]:
    """One sample's shape as the caller or the ticket gives it; () when neither does."""
    if example_inputs is not None:
        return tuple(int(d) for d in example_inputs.shape[1:])
    if ticket is not None and ticket.input_shape:
        return ticket.input_shape
    return ()


def _in_chans(model: nn.Module, cfg: dict[str, Any], shape: tuple[int, ...]) -> int:
    if shape:
        return shape[0]
    first = _first_conv_name(model, cfg)
    if first is not None:
        return int(model.get_submodule(first).in_channels)
    size = cfg.get("input_size")
    if size:
        return int(size[0])
    raise _fail("ModelSpec.in_chans: the model has no convolution and records no input size")


def _input_size(cfg: dict[str, Any], shape: tuple[int, ...], in_chans: int) -> tuple[int, int, int]:
    if shape:
        return shape  # type: ignore[return-value]  # ModelSpec checks it is (C, H, W)
    size = cfg.get("input_size")
    if size and len(size) == 3:
        return (in_chans, int(size[1]), int(size[2]))
    raise _fail(
        "ModelSpec.input_size: neither example_inputs nor a ticket recording its input shape "
        "was given, and the model has no timm cfg"
    )


def _per_channel(stats: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """``stats`` for ``in_chans`` channels: a timm cfg keeps RGB statistics for in_chans=1
    models, so they are averaged (the rule ebcompress's CIFAR cfgs follow)."""
    stats = tuple(float(v) for v in stats)
    if len(stats) in (1, in_chans):
        return stats
    return (sum(stats) / len(stats),) * in_chans


def _num_classes(model: nn.Module) -> int:
    """timm's ``num_classes``, else the output width of the last Linear in module order."""
    value = getattr(model, "num_classes", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    raise _fail("ModelSpec.num_classes: the model has no num_classes attribute and no nn.Linear")


def _head_names(model: nn.Module) -> set[str]:
    names = {module: name for name, module in model.named_modules()}
    heads = set()
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        with contextlib.suppress(Exception):  # a non-timm method of the same name
            heads.update(names.get(m, "") for m in get_classifier().modules())
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    heads.update(linears[-1:])
    return heads - {""}


def _first_conv_name(model: nn.Module, cfg: dict[str, Any]) -> str | None:
    """timm's ``first_conv`` if it names a convolution, else the first nn.Conv2d."""
    modules = dict(model.named_modules())
    named = cfg.get("first_conv")
    if isinstance(named, str) and isinstance(modules.get(named), nn.Conv2d):
        return named
    return next((name for name, m in modules.items() if isinstance(m, nn.Conv2d)), None)


# --------------------------------------------------------------------------- torchvision
def _torchvision_arch(model: nn.Module, ticket: Ticket | None) -> str:
    """``tv:<name>`` of the torchvision builder whose model has ``model``'s layout."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)  # classification
    kind = type(model)
    candidates = [name for name in names if _builds(name, kind)]
    if not candidates:
        raise _fail(f"ModelSpec.arch: no torchvision classifier builder makes a {kind.__name__}")
    num_classes = _num_classes(model)
    for name in candidates:
        try:
            with _weights_on_meta():
                candidate = torchvision.models.get_model(name, num_classes=num_classes)
        except Exception:  # a builder that cannot run this way is simply not this model
            continue
        if _same_layout(model, candidate, ticket):
            return f"tv:{name}"
    raise _fail(
        f"ModelSpec.arch: none of torchvision's {kind.__name__} builders "
        f"({', '.join(candidates[:4])}{', ...' if len(candidates) > 4 else ''}) has this "
        "model's layers" + ("" if ticket is not None else " (a slim model needs its ticket)")
    )


def _builds(name: str, kind: type) -> bool:
    import torchvision

    returned = torchvision.models.get_model_builder(name).__annotations__.get("return")
    return returned is kind or returned == kind.__name__


@contextlib.contextmanager
def _weights_on_meta() -> Iterator[None]:
    """Parameters created meanwhile live on the meta device: matching a ResNet against
    torchvision's ten ResNet builders takes milliseconds, not gigabytes. (``torch.device("meta")``
    as a context would also move the tensors RegNet computes its widths with, which fails.)"""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


_CONV_HYPERPARAMETERS = ("kernel_size", "stride", "padding", "dilation", "groups")


def _depthwise(conv: nn.modules.conv._ConvNd) -> bool:
    """One group per input channel: slimming changes ``groups`` with the width (a grouped
    convolution keeps its group count: whole slices are kept)."""
    return conv.groups > 1 and conv.groups == conv.in_channels


def _same_layout(model: nn.Module, candidate: nn.Module, ticket: Ticket | None) -> bool:
    """Same module names and types, same conv hyperparameters, and the dense widths the
    ticket records (a dense model without ticket: the same parameter shapes)."""
    ours, theirs = dict(model.named_modules()), dict(candidate.named_modules())
    if {k: type(v) for k, v in ours.items()} != {k: type(v) for k, v in theirs.items()}:
        return False
    for name, module in ours.items():
        if isinstance(module, nn.modules.conv._ConvNd):
            other = theirs[name]
            hyper = [a for a in _CONV_HYPERPARAMETERS if a != "groups" or not _depthwise(module)]
            if any(getattr(module, a) != getattr(other, a) for a in hyper) or (
                _depthwise(module) != _depthwise(other)
            ):
                return False
    if ticket is not None:
        return all(
            name in theirs and out_width(theirs[name]) == width
            for name, width in ticket.widths.items()
        )
    shapes = {k: tuple(v.shape) for k, v in candidate.named_parameters()}
    return shapes == {k: tuple(v.shape) for k, v in model.named_parameters()}

"""Models by name: the CIFAR-style zoo (registered in timm) and any timm or torchvision CNN.

Importing this package registers ``vgg{11,13,16,19}_cifar``, ``preresnet_cifar`` (any valid
depth) with ``preresnet{20,56,101,164}_cifar``, and ``resnet{20,32,56,110}_cifar`` in timm's
registry, so ``timm.create_model("vgg16_cifar", num_classes=100)`` works. :func:`build_model`
builds any of them, or a timm or torchvision model, randomly initialised or with the weights
of a local file (``init=``, :mod:`ebcompress.models.weights`); it never downloads weights.
"""

from __future__ import annotations

import os
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from ebcompress.errors import UserError
from ebcompress.models import preresnet_cifar, resnet_cifar, vgg_cifar
from ebcompress.models.preresnet_cifar import PreResNetCifar
from ebcompress.models.resnet_cifar import ResNetCifar
from ebcompress.models.vgg_cifar import VGGCifar
from ebcompress.models.weights import build_from_file, build_timm_from_file

__all__ = ["PreResNetCifar", "ResNetCifar", "VGGCifar", "build_model", "list_cifar_models"]

# timm files each registered model under its module's last name component.
_CIFAR_MODULES = [
    module.__name__.rsplit(".", 1)[-1] for module in (vgg_cifar, preresnet_cifar, resnet_cifar)
]


def list_cifar_models() -> list[str]:
    """Names of the CIFAR-style models this package registers in timm, in natural order."""
    return timm.list_models(module=_CIFAR_MODULES)


def build_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    init: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A model by name, randomly initialised or, with ``init``, holding the weights of that
    local file; never downloads weights.

    ``name`` is ``"timm:NAME"`` or a bare ``NAME`` (``timm.create_model``, so the CIFAR zoo
    too), or ``"tv:NAME"`` (``torchvision.models.get_model`` with ``weights=None``).
    torchvision models have no ``in_chans``: for ``in_chans != 3`` the first ``nn.Conv2d`` in
    module order is replaced by one with the same hyperparameters and ``in_chans`` inputs,
    its weights drawn with the replaced weights' standard deviation (what most torchvision
    inits give a fan-out conv, whose scale does not depend on the input channels).
    ``kwargs`` go to the model constructor. The model records ``name`` and ``kwargs`` in its
    ``_ebcompress_build`` attribute, which :func:`ebcompress.export` reads to rebuild it when
    no ``spec=`` is given (deep copies and slimmed copies keep it).

    ``init`` (safetensors or a weights-only PyTorch checkpoint, :mod:`ebcompress.models.weights`)
    is loaded strictly, but a classifier that is missing from the file or has another class
    count keeps its initialisation; ``_ebcompress_init`` then records the file and that
    classifier. timm models load it through timm's own mechanism
    (``pretrained_cfg_overlay=dict(file=...)``, which also adapts the stem to ``in_chans``);
    the CIFAR zoo and torchvision models are built, then loaded.
    """
    source, _, model_name = name.rpartition(":")
    for forbidden in ("pretrained", "weights"):
        if forbidden in kwargs:
            raise UserError(
                f"model {name!r}: {forbidden!r} is not accepted; ebcompress never downloads weights"
            )
    try:
        if source in ("", "timm"):
            model = _build_timm(model_name, num_classes, in_chans, kwargs, init)
        elif source == "tv":

            def build() -> nn.Module:
                return _build_torchvision(model_name, num_classes, in_chans, kwargs)

            model = build() if init is None else build_from_file(build, init, name)
        else:
            model = None
    except TypeError as error:
        # An unknown constructor argument is the user's (a recipe's) mistake, not a bug here.
        raise UserError(f"model {name!r} rejected its arguments: {error}") from error
    if model is not None:
        # Plain data (not a buffer): how to build this architecture again, for a bundle's spec.
        model._ebcompress_build = {"arch": name, "build_kwargs": dict(kwargs)}
        return model
    raise UserError(
        f"model {name!r}: unknown source {source!r}; use 'timm:NAME', 'tv:NAME' or a bare timm name"
    )


def _build_timm(
    name: str,
    num_classes: int,
    in_chans: int,
    kwargs: dict[str, Any],
    init: str | os.PathLike[str] | None,
) -> nn.Module:
    if not timm.is_model(name):
        raise UserError(
            f"unknown timm model {name!r}; list them with timm.list_models('*resnet*') "
            "or ebcompress.models.list_cifar_models()"
        )

    def build() -> nn.Module:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs
        )

    if init is None:
        return build()
    if name in list_cifar_models():  # the zoo has no pretrained cfg: built, then loaded
        return build_from_file(build, init, name)
    return build_timm_from_file(name, num_classes, in_chans, kwargs, init)


def _build_torchvision(
    name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]
) -> nn.Module:
    if name not in torchvision.models.list_models():
        raise UserError(
            f"unknown torchvision model {name!r}; list them with torchvision.models.list_models()"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    return model


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    path, conv = next(
        ((path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None)
    )
    if conv is None:
        raise UserError(f"cannot set in_chans={in_chans}: the model has no nn.Conv2d to adapt")
    replacement = nn.Conv2d(
        in_chans,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        replacement.weight.normal_(0.0, conv.weight.std().item())
        if conv.bias is not None:
            replacement.bias.copy_(conv.bias)
    parent_path, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attribute, replacement)

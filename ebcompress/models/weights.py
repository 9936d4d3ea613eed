"""Starting weights from a local file (``model.init``): read, checked, loaded. Nothing is
downloaded and nothing but tensors is unpickled.

A file is safetensors (by its ``.safetensors`` suffix, as timm decides) or a PyTorch checkpoint
read with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed too, as timm
allows it: timm training checkpoints keep their arguments in one). A checkpoint may be a bare
state dict or a dict holding one under ``state_dict_ema``, ``model_ema``, ``state_dict`` or
``model`` (timm's order: EMA weights first); the ``module.`` (DDP) and ``_orig_mod.``
(``torch.compile``) prefixes are stripped.

Loading is strict except for the classifier: when the file's classifier is missing or has
another shape (ImageNet's 1000 classes on a 10-class data set), it keeps its fresh
initialisation and :func:`build_from_file` names it, the usual transfer from a pretrained
backbone. Any other missing, unexpected or misshapen tensor is one UserError line naming the
first few and the file. timm models (those with a pretrained config) load through timm's own
mechanism, ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=...)``, which adapts
the stem to ``in_chans`` and runs the model's checkpoint filter; the rest load here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ebcompress.errors import UserError

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")
_CONVERT = (
    "save the weights alone where the model is defined: torch.save(model.state_dict(), "
    "'weights.pt') or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
)
_SHOWN = 3  # keys named per kind of mismatch


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a weights file, hex; UserError when it is not a readable file."""
    path = _existing(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in the weights file ``path``, on the CPU (module docstring)."""
    path = _existing(path)
    where = f"model.init {str(path)!r}"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _cleaned(load_file(path, device="cpu"), where)
        except SafetensorError as exc:
            raise UserError(f"{where} is not a readable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UserError(
                f"{where} is not a weights-only file: reading it would unpickle Python objects "
                f"such as {found.group(1)}, which ebcompress never does; {_CONVERT}"
            ) from None
        detail = str(exc).partition("WeightsUnpickler error:")[2].strip() or str(exc).strip()
        reason = detail.splitlines()[0] if detail else type(exc).__name__
        raise _not_a_checkpoint(where, reason) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _not_a_checkpoint(where, reason) from None
    return _cleaned(_unwrapped(checkpoint), where)


def build_from_file(
    build: Callable[[], nn.Module], path: str | os.PathLike[str], name: str
) -> nn.Module:
    """``build()`` (a freshly initialised ``name``) with the weights of ``path`` loaded.

    The model's ``_ebcompress_init`` attribute records ``{"file": ..., "new_head": [...]}``:
    the classifier modules that kept their initialisation (empty when the file's fitted).
    """
    state = read_weights(path)
    model = build()
    load_checked(model, state, path, name)
    return model


def load_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str], name: str
) -> tuple[str, ...]:
    """Load ``state`` into ``model`` strictly but for the classifier (module docstring);
    returns the classifier modules left as initialised and records them on the model."""
    model_state = model.state_dict()
    heads = head_names(model)
    new_head = tuple(h for h in heads if not _head_fits(h, model_state, state))
    kept = {k: v for k, v in state.items() if not _under(k, new_head)}
    problem = key_problems(model_state, kept, skip=new_head)
    if problem:
        raise UserError(_mismatch(path, name, problem))
    result = model.load_state_dict(kept, strict=False)
    assert all(_under(k, new_head) for k in result.missing_keys), result.missing_keys
    record_init(model, path, new_head)
    return new_head


def build_timm_from_file(
    name: str,
    num_classes: int,
    in_chans: int,
    kwargs: dict[str, Any],
    path: str | os.PathLike[str],
) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` from the local file ``path`` through timm's
    own mechanism (``pretrained_cfg_overlay``: ``file``, no other source, and the file's class
    count, so timm keeps the classifier when it fits and drops it when not)."""
    import timm

    kwargs = dict(kwargs)
    state = read_weights(path)  # checked here first: timm's own errors are many lines
    cfg = timm.get_pretrained_cfg(name)
    heads = _as_tuple(cfg.classifier if cfg is not None else None)
    head_weight = state.get(f"{heads[0]}.weight") if heads else None
    # -1: never the model's count, so timm drops the (absent or unknown) head and loads the rest
    file_classes = -1 if head_weight is None else int(head_weight.shape[0])
    new_head = heads if file_classes != num_classes else ()
    overlay = {
        **dict(kwargs.pop("pretrained_cfg_overlay", None) or {}),
        "file": str(Path(path).expanduser()),
        "source": None,  # "hf-hub" would take precedence over the file
        "state_dict": None,
        "num_classes": file_classes,
    }
    stem = _as_tuple(cfg.first_conv if cfg is not None else None)
    stem_weight = state.get(f"{stem[0]}.weight") if stem else None
    if cfg is not None and stem_weight is not None and stem_weight.ndim == 4:
        # timm adapts the stem from the cfg's channel count; the file's may differ from it
        overlay["input_size"] = (int(stem_weight.shape[1]), *cfg.input_size[1:])

    def create(pretrained: bool) -> nn.Module:
        return timm.create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg_overlay=overlay if pretrained else None,
            num_classes=num_classes,
            in_chans=in_chans,
            **kwargs,
        )

    try:
        model = create(pretrained=True)
    except RuntimeError as exc:  # a strict load that failed: name the keys in one line
        problem = key_problems(create(pretrained=False).state_dict(), state, skip=new_head)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(_mismatch(path, name, problem or first)) from None
    if new_head:
        # timm loaded non-strictly (it dropped the head): check the rest is all there
        problem = key_problems(model.state_dict(), state, skip=new_head, shapes=False)
        if problem:
            raise UserError(_mismatch(path, name, problem))
    record_init(model, path, new_head)
    return model


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier's module names: timm's ``pretrained_cfg["classifier"]``, else the
    module ``get_classifier()`` returns, else the last ``nn.Linear`` (torchvision)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("classifier"):
        return _as_tuple(cfg["classifier"])
    names = {module: n for n, module in model.named_modules()}
    getter = getattr(model, "get_classifier", None)
    if callable(getter) and getter() in names:
        return (names[getter()],)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (linears[-1],) if linears else ()


def key_problems(
    model_state: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    skip: Sequence[str] = (),
    shapes: bool = True,
) -> str:
    """What keeps ``state`` from loading into a model with ``model_state``, ignoring the
    modules ``skip``: the first few missing, unexpected and misshapen keys ('' if none)."""
    missing = [k for k in model_state if k not in state and not _under(k, skip)]
    unexpected = [k for k in state if k not in model_state and not _under(k, skip)]
    misshapen = [
        f"{k} (file {_shape(state[k])}, model {_shape(model_state[k])})"
        for k in state
        if shapes
        and k in model_state
        and not _under(k, skip)
        and state[k].shape != model_state[k].shape
    ]
    parts = [
        f"{len(found)} {kind}: {', '.join(found[:_SHOWN])}{', ...' if len(found) > _SHOWN else ''}"
        for kind, found in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("of another shape", misshapen),
        )
        if found
    ]
    return "; ".join(parts)


def record_init(model: nn.Module, path: str | os.PathLike[str], new_head: Sequence[str]) -> None:
    """Note on ``model`` where its weights came from (plain data, copied with the model)."""
    model._ebcompress_init = {"file": str(path), "new_head": list(new_head)}


def _not_a_checkpoint(where: str, reason: str) -> UserError:
    return UserError(
        f"{where} is not a PyTorch checkpoint ({reason}); give a .safetensors file (by that "
        "suffix) or a state dict written by torch.save"
    )


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"model.init {str(path)!r} is not a file; give a local weights file (.safetensors, "
            "or a torch.save state dict such as .pt / .pth / .bin)"
        )
    return path


def _unwrapped(checkpoint: Any) -> Any:
    if isinstance(checkpoint, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                return checkpoint[key]
    return checkpoint


def _cleaned(state: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state:
        kind = "an empty mapping" if isinstance(state, Mapping) else type(state).__name__
        raise UserError(f"{where} holds {kind}, not a state dict; {_CONVERT}")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        keys = ", ".join(not_tensors[:_SHOWN])
        raise UserError(
            f"{where} is not a state dict: {len(not_tensors)} entries are not tensors "
            f"({keys}); a checkpoint's weights go under 'state_dict' or 'model', or {_CONVERT}"
        )
    cleaned = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith(_PREFIXES):
            key = next(key[len(p) :] for p in _PREFIXES if key.startswith(p))
        cleaned[key] = value
    return cleaned


def _head_fits(
    head: str, model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> bool:
    keys = [k for k in model_state if _under(k, (head,))]
    return bool(keys) and all(k in state and state[k].shape == model_state[k].shape for k in keys)


def _under(key: str, modules: Sequence[str]) -> bool:
    return any(key.startswith(f"{m}.") for m in modules)


def _as_tuple(names: str | Sequence[str] | None) -> tuple[str, ...]:
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _mismatch(path: str | os.PathLike[str], name: str, problem: str) -> str:
    return (
        f"model.init {str(path)!r} does not fit {name!r} ({problem}); give weights saved from "
        "this model.name with these model.kwargs and this data set's classes and channels"
    )

"""Unstructured weight masks: the prunable weights, global top-k masks, and a retrain callback.

Lottery ticket (Frankle & Carbin, ICLR 2019) and SNIP (Lee et al., ICLR 2019) in their original
form remove individual weights, not channels. Their ticket therefore keeps every channel
(:func:`full_ticket`, so slimming is the identity and the ledger honestly counts dense MACs)
and the sparsity lives in a ``{parameter name: bool mask}`` dict that
:class:`WeightMaskCallback` enforces while the dense-shaped network retrains.

Why a gradient mask and not ``torch.nn.utils.parametrize`` or a forward pre-hook: both of those
change what the module holds (a parametrised module renames ``weight`` in its state dict and
breaks export, slimming and FLOP counting; a pre-hook must be removed before export and is
copied along with the model). Zeroing the masked weights *and* their gradients after every
backward keeps them exactly ``+0.0`` under SGD with momentum, Nesterov and weight decay: the
update of a masked entry is ``grad + wd * w = 0``, so its momentum buffer, which starts at
zero, stays zero. The model stays a plain dense module whose state dict already is the
exported, masked network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.ticket import Ticket
from ebcompress.engine.distributed import unwrap
from ebcompress.errors import UserError

MASK_STATE_FORMAT = 1


def full_ticket(
    graph: ChannelGraph,
    ratio: float,
    *,
    importance: str,
    epoch: int | None,
    model_name: str | None,
    **extra: Any,
) -> Ticket:
    """A ticket that keeps every channel of every group (for unstructured methods).

    ``ratio`` is the requested fraction of *weights* removed; ``extra`` records the
    granularity and the achieved weight sparsity, so a report can tell it from a channel ticket.
    """
    widths = dict(graph.widths)
    return Ticket(
        kept={name: tuple(range(width)) for name, width in widths.items()},
        widths=widths,
        ratio=ratio,
        epoch=epoch,
        importance=importance,
        model_name=model_name,
        input_shape=graph.input_shape,
        kept_dense=dict(graph.kept_dense),  # slim traces without them, as for a channel ticket
        extra={"granularity": "unstructured", **extra},
    )


def classifier_name(model: nn.Module) -> str | None:
    """The module that produces the logits: timm's ``get_classifier()`` when the model has one,
    otherwise the last ``nn.Linear`` registered. None when neither exists."""
    modules = dict(model.named_modules())
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        for name, module in modules.items():
            if module is head and hasattr(module, "weight"):
                return name
    linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` of every conv and linear layer except the classifier.

    The classifier stays dense, as in both papers' convolutional experiments: it is tiny, and
    removing logit weights prunes classes, not redundancy.
    """
    head = classifier_name(model)
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, _ConvNd | nn.Linear) and name != head
    }


def global_magnitude_masks(scores: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Keep-masks that remove exactly ``round(ratio * total)`` entries with the lowest scores,
    ranked globally over all tensors; ties go to the earlier tensor / index (stable sort)."""
    if not 0 < ratio < 1:
        raise UserError(f"prune.ratio {ratio!r} must lie in the open interval (0, 1)")
    flat = torch.cat([score.detach().flatten().float().cpu() for score in scores.values()])
    remove = round(ratio * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:remove]] = False
    masks, offset = {}, 0
    for name, score in scores.items():
        masks[name] = keep[offset : offset + score.numel()].view(score.shape)
        offset += score.numel()
    return masks


def weight_sparsity(masks: Mapping[str, Tensor]) -> float:
    """The fraction of masked-out (zero) entries over all masks."""
    total = sum(mask.numel() for mask in masks.values())
    kept = sum(int(mask.sum()) for mask in masks.values())
    return 1.0 - kept / max(total, 1)


def masked_state(state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` with the masked-out entries of each masked weight set to zero."""
    out = {name: value.detach().clone() for name, value in state.items()}
    for name, mask in masks.items():
        if name not in out:
            raise KeyError(f"weight mask {name!r} names no entry of the state dict")
        out[name].masked_fill_(~mask.to(out[name].device), 0)
    return out


class WeightMaskCallback:
    """Engine callback that holds the masked-out weights at exactly zero while training.

    ``after_backward`` (between backward and the optimiser step) zeroes the masked weights and
    their gradients; see the module docstring for why that is exact under SGD. Parameters are
    looked up by name on the model the engine passes in, so the callback survives slimming
    and data-parallel wrapping.

    Masks travel in the checkpoint. A resumed retrain continues with the checkpoint's masks,
    which its weights were trained with: a re-run search can score a few near-tied weights
    differently (GPU kernels are not bit-reproducible), which must not break the resume. Masks
    of another structure or another sparsity (a changed recipe) are refused.
    """

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self.masks = {name: mask.detach().to("cpu", torch.bool) for name, mask in masks.items()}
        self._bound: tuple[nn.Module, list[Tensor], list[Tensor]] | None = None

    def _bind(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        if self._bound is not None and self._bound[0] is model:
            return self._bound[1], self._bound[2]
        named = dict(unwrap(model).named_parameters())
        missing = [name for name in self.masks if name not in named]
        if missing:
            raise KeyError(f"weight masks name parameters the model lacks: {missing[:3]}")
        params = [named[name] for name in self.masks]
        prune = [
            (~mask).to(param.device)
            for mask, param in zip(self.masks.values(), params, strict=True)
        ]
        self._bound = (model, params, prune)
        return params, prune

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the masked-out weights of ``model`` in place."""
        params, prune = self._bind(model)
        for param, pruned in zip(params, prune, strict=True):
            param.masked_fill_(pruned, 0)

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        params, prune = self._bind(model)
        for param, pruned in zip(params, prune, strict=True):
            param.masked_fill_(pruned, 0)
            if param.grad is not None:
                param.grad.masked_fill_(pruned, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"format": MASK_STATE_FORMAT, "masks": dict(self.masks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("masks") if state.get("format") == MASK_STATE_FORMAT else None
        compatible = (
            isinstance(saved, dict)
            and list(saved) == list(self.masks)
            and all(saved[name].shape == mask.shape for name, mask in self.masks.items())
            and sum(int(m.bool().sum()) for m in saved.values())
            == sum(int(m.sum()) for m in self.masks.values())
        )
        if not compatible:
            raise UserError(
                "the retrain checkpoint was written with weight masks of another structure or "
                "sparsity (was prune.ratio changed?); start afresh with --overwrite"
            )
        self.masks = {name: mask.to("cpu", torch.bool) for name, mask in saved.items()}
        self._bound = None

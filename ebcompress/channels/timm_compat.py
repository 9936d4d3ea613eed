"""Keep a slimmed timm model a timm model.

timm stores some widths as plain values (``num_features``, ``head_hidden_size``,
``feature_info[i]["num_chs"]``) that torch-pruning cannot know to update, and
``reset_classifier`` sizes a new head from them. After slimming they are measured again.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def sync_timm_attributes(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """Make a (slimmed) timm model's width attributes report its actual widths.

    timm stores ``num_features`` (channels out of ``forward_features``), ``head_hidden_size``
    (width into the classifier) and ``feature_info[i]["num_chs"]`` as plain values that
    torch-pruning does not update; ``reset_classifier`` sizes the new head from them. They are
    measured with one forward pass on ``example_inputs``. A model without ``forward_features``
    and ``forward_head`` (not timm-style) is returned unchanged. Idempotent.
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return model
    infos = getattr(model, "feature_info", None)
    stage_widths: dict[str, int] = {}
    hooks = []
    if isinstance(infos, list):
        modules = dict(model.named_modules())
        for info in infos:
            name = info.get("module") if isinstance(info, dict) else None
            if name in modules:

                def record(_module, _inputs, output, name=name) -> None:
                    if isinstance(output, torch.Tensor) and output.dim() == 4:
                        stage_widths[name] = int(output.shape[1])

                hooks.append(modules[name].register_forward_hook(record))
    # Every module's own flag is restored, not one flag for all: slim() promises a copy with
    # the original's (possibly mixed) train/eval flags. Eval mode: BatchNorm in training mode
    # would reject a batch of one that reaches a 1x1 map.
    modes = [(module, module.training) for module in model.modules()]
    device = next((p.device for p in model.parameters()), example_inputs.device)
    model.eval()
    try:
        features = model.forward_features(example_inputs.to(device))
        pre_logits = model.forward_head(features, pre_logits=True)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.training = training
    # CNN features are NCHW (also pre-logits with global_pool=""); token models keep channels last.
    _set_plain_attribute(model, "num_features", features)
    _set_plain_attribute(model, "head_hidden_size", pre_logits)
    for info in infos if isinstance(infos, list) else ():
        if isinstance(info, dict) and info.get("module") in stage_widths:
            info["num_chs"] = stage_widths[info["module"]]
    return model


def _set_plain_attribute(model: nn.Module, name: str, output: object) -> None:
    """Set a width attribute the model stores as a value; computed properties stay as they are."""
    if not hasattr(model, name) or isinstance(getattr(type(model), name, None), property):
        return
    if isinstance(output, torch.Tensor) and output.dim() >= 2:
        setattr(model, name, int(output.shape[1] if output.dim() == 4 else output.shape[-1]))

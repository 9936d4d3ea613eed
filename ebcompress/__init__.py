"""ebcompress: Early-Bird ticket training and graph-aware channel slimming for PyTorch CNNs.

The core API fits your own training loop::

    bird = eb.EarlyBird(model, example_inputs=torch.randn(1, 3, 224, 224), ratio=0.3)
    ...                                   # after loss.backward(): bird.regularize()
    if bird.step(): ...                   # at the end of an epoch: True once the ticket emerged
    slim = eb.slim(model, bird.ticket)    # physically slimmed copy, weights inherited
    eb.export(slim, "model_eb", ticket=bird.ticket)   # pickle-free bundle; eb.load("model_eb")

A batch of one is a valid example input, also for nets whose last map is 1x1 with BatchNorm.
``ignored_layers`` (modules or names; a container means all its submodules) are recorded in
the ticket, and ``slim``, ``masked_equivalent`` and ``load`` replay them. ``export`` infers
the ModelSpec of a timm, torchvision or ``build_model`` model and checks that it rebuilds the
model; pass ``spec=eb.ModelSpec(...)`` for anything else.
"""

from ebcompress.lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> the module defining it. Resolved on first use (PEP 562), so importing one
# part of the library (``ebcompress.channels``, say) does not load pydantic, safetensors or
# onnx, and ``ebcompress --help`` does not wait for torch.
_PUBLIC = {
    "BNL1Regularizer": "ebcompress.earlybird.sparsity",
    "Budget": "ebcompress.channels.draw_options",
    "ChannelGraph": "ebcompress.channels.graph",
    "DrawOptions": "ebcompress.channels.draw_options",
    "EarlyBird": "ebcompress.earlybird.detector",
    "FlopCount": "ebcompress.cost.flops",
    "MaskHistory": "ebcompress.earlybird.mask_history",
    "ModelSpec": "ebcompress.deploy.bundle",
    "Recipe": "ebcompress.recipe",
    "Ticket": "ebcompress.channels.ticket",
    "TrainingLedger": "ebcompress.cost.flops",
    "UserError": "ebcompress.errors",
    "build_model": "ebcompress.models",
    "count_flops": "ebcompress.cost.flops",
    "draw_ticket": "ebcompress.channels.graph",
    "export": "ebcompress.deploy.formats",
    "load": "ebcompress.deploy.bundle",
    "load_recipe": "ebcompress.recipe",
    "mask_distance": "ebcompress.channels.ticket",
    "masked_equivalent": "ebcompress.channels.slim",
    "slim": "ebcompress.channels.slim",
}


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC)

__all__ = [
    "BNL1Regularizer",
    "Budget",
    "ChannelGraph",
    "DrawOptions",
    "EarlyBird",
    "FlopCount",
    "MaskHistory",
    "ModelSpec",
    "Recipe",
    "Ticket",
    "TrainingLedger",
    "UserError",
    "__version__",
    "build_model",
    "count_flops",
    "draw_ticket",
    "export",
    "load",
    "load_recipe",
    "mask_distance",
    "masked_equivalent",
    "slim",
]

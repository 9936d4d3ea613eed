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

from ebcompress.channels import ChannelGraph, draw_ticket
from ebcompress.earlybird import EarlyBird
from ebcompress.errors import UserError
from ebcompress.export import ModelSpec, export, load
from ebcompress.flops import FlopCount, TrainingLedger, count_flops
from ebcompress.mask_history import MaskHistory
from ebcompress.models import build_model
from ebcompress.recipe import Recipe, load_recipe
from ebcompress.slim import masked_equivalent, slim
from ebcompress.sparsity import BNL1Regularizer
from ebcompress.ticket import Ticket, mask_distance

__version__ = "0.1.0"

__all__ = [
    "BNL1Regularizer",
    "ChannelGraph",
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

"""Apply a ticket: physically slim a network, or mask it for verification.

:func:`slim` is the step after a ticket is drawn (You et al., ICLR 2020, Sec. 3.3: "prune the
network to the ticket, then retrain"): it removes the pruned channels with torch-pruning's
dependency groups, so residual-coupled channels go together and every consumer's input
channels shrink with them. The weights of the kept channels are inherited unchanged.

:func:`masked_equivalent` builds the dense network that computes exactly what the slim one
computes, for tests and for users who want to check a slim model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops

from ebcompress.channels.groups import (
    GroupHandle,
    clone_module,
    model_device,
    modes_preserved,
    same_layers,
)
from ebcompress.channels.groups import trace_channel_groups as _trace
from ebcompress.channels.probe import forward_error, pruning_group, width_error
from ebcompress.channels.ticket import Ticket, structure_fingerprint
from ebcompress.channels.timm_compat import sync_timm_attributes
from ebcompress.checks import check_batch, check_instance, check_module, check_runs
from ebcompress.errors import UserError

LayerRef = nn.Module | str


def slim(
    model: nn.Module,
    ticket: Ticket,
    example_inputs: torch.Tensor | None = None,
    *,
    graph_ignored_layers: Sequence[LayerRef] = (),
) -> nn.Module:
    """A physically slimmed deep copy of ``model`` keeping the ticket's channels.

    The original is untouched. The copy keeps the train/eval flag and ``requires_grad`` of
    every module and parameter, but its pruned parameters are NEW ``nn.Parameter`` objects:
    build the optimizer after slimming. ``graph_ignored_layers`` are the layers given as
    ``ignored_layers`` when the ticket was drawn (modules of ``model``, or their names; a
    container stands for all its submodules); left empty, the ticket's own record
    (``ticket.ignored_layers``) is replayed, and a recorded name ``model`` lacks is a UserError.

    Raises UserError when the ticket was drawn from another structure, and when the slimmed
    copy does not have the ticket's widths or cannot run ``example_inputs`` (naming the
    layer) — nothing is ever returned half-pruned. ``example_inputs`` defaults to a random
    batch of the shape the ticket was drawn with.
    """
    check_module(model, "model")
    slimmed = clone_module(model)
    # Checked on the private copy: toggling the caller's model to eval mode for the check
    # would race with another thread using it.
    example_inputs = resolve_example_inputs(slimmed, ticket, example_inputs)
    requires_grad = {name: p.requires_grad for name, p in slimmed.named_parameters()}
    with modes_preserved(slimmed):
        graph, handles = _matching_groups(
            model, slimmed, ticket, example_inputs, graph_ignored_layers
        )
        for handle in handles:
            pruned = ticket.pruned(handle.info.name)
            if pruned:
                pruning_group(graph, handle, pruned).prune()
        _check_widths(handles, ticket)
        _check_forward(slimmed, example_inputs)
    for name, param in slimmed.named_parameters():
        param.requires_grad_(requires_grad[name])
    return sync_timm_attributes(slimmed, example_inputs)


def masked_equivalent(
    model: nn.Module,
    ticket: Ticket,
    example_inputs: torch.Tensor | None = None,
    *,
    graph_ignored_layers: Sequence[LayerRef] = (),
) -> nn.Module:
    """A dense deep copy of ``model`` whose pruned channels are zeroed everywhere.

    Zeroed are exactly the parameter slices :func:`slim` removes, found from the same
    torch-pruning groups: the gamma and beta of the pruned BN channels, the output rows (and
    biases) of the convolutions/linears producing them, and the input columns of every
    consumer. Zeroing gamma and beta alone is not enough: in a pre-activation ResNet the
    residual stream reaches the next block's addition and convolutions without a BN in
    between, so a pruned channel would still carry its shortcut value. With the consumers'
    columns zeroed a pruned channel contributes nothing whatever it carries, so in eval mode
    ``masked_equivalent(x) == slim(x)`` up to float rounding, for every architecture.
    ``graph_ignored_layers`` is :func:`slim`'s: empty replays ``ticket.ignored_layers``.
    """
    check_module(model, "model")
    masked = clone_module(model)
    example_inputs = resolve_example_inputs(masked, ticket, example_inputs)  # see slim
    with modes_preserved(masked):
        graph, handles = _matching_groups(
            model, masked, ticket, example_inputs, graph_ignored_layers
        )
        with torch.no_grad():
            for handle in handles:
                pruned = ticket.pruned(handle.info.name)
                if pruned:
                    for item in pruning_group(graph, handle, pruned):
                        _zero(graph, item.dep, item.idxs)
    return masked


def resolve_example_inputs(
    model: nn.Module, ticket: Ticket, example_inputs: torch.Tensor | None
) -> torch.Tensor:
    """``example_inputs``, or a random batch of one in the shape recorded in the ticket.

    The arguments are checked first (TypeError or UserError naming them): ``model`` must be a
    module, ``ticket`` a :class:`Ticket`, and the batch one the model runs.
    """
    check_module(model, "model")
    check_instance(ticket, Ticket, "ticket", how="Ticket.load(path) or Ticket.from_dict(data)")
    if example_inputs is not None:
        check_runs(model, check_batch(example_inputs, "example_inputs"), "example_inputs")
        return example_inputs
    shape = ticket.input_shape
    if not shape:
        raise UserError(
            "this ticket records no input shape; pass example_inputs (one batch, e.g. "
            "torch.randn(1, 3, 32, 32))"
        )
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(1, *shape, generator=generator).to(model_device(model))
    check_runs(
        model,
        batch,
        "a batch of the ticket's input_shape",
        fix="apply the ticket to the architecture it was drawn from, or pass example_inputs",
    )
    return batch


def group_widths(
    model: nn.Module, example_inputs: torch.Tensor, *, ignored_layers: Sequence[nn.Module] = ()
) -> dict[str, int]:
    """The channel-group widths of ``model`` as a fresh trace sees them (e.g. of a slim model)."""
    handles = _trace(model, example_inputs, ignored_layers).handles
    return {handle.info.name: handle.info.width for handle in handles}


def _matching_groups(
    original: nn.Module,
    clone: nn.Module,
    ticket: Ticket,
    example_inputs: torch.Tensor,
    ignored: Sequence[LayerRef],
) -> tuple[tp.DependencyGraph, list[GroupHandle]]:
    """Trace ``clone`` and check that the ticket describes its groups, naming any difference.

    No ``ignored`` layers given: those the ticket records are replayed, by name.
    """
    dense = ticket.kept_dense
    if not ignored:
        modules = dict(original.named_modules())
        missing = [name for name in ticket.ignored_layers if name not in modules]
        if missing:
            raise UserError(
                f"the ticket's ignored layer {missing[0]!r} is not in the model; apply the "
                "ticket to the architecture it was drawn from"
            )
        ignored = ticket.ignored_layers
    ignored_layers = same_layers(original, clone, ignored)
    graph, handles, _ = _trace(clone, example_inputs, ignored_layers, dense=dense)
    widths = {handle.info.name: handle.info.width for handle in handles}
    if list(widths.items()) != list(ticket.widths.items()):
        raise UserError(f"ticket does not fit this model: {_difference(ticket.widths, widths)}")
    if ticket.fingerprint != structure_fingerprint(widths):
        raise UserError(
            f"ticket fingerprint {ticket.fingerprint} does not match its own groups "
            "(was the ticket file edited?); draw the ticket again"
        )
    return graph, handles


def _difference(expected: dict[str, int], found: dict[str, int]) -> str:
    hint = "draw the ticket from this architecture (and the same ignored layers)"
    for name, width in expected.items():
        if name not in found:
            return f"group {name!r} of the ticket is not a prunable group of the model; {hint}"
        if found[name] != width:
            return (
                f"group {name!r} is {width} wide in the ticket, {found[name]} in the model; {hint}"
            )
    for name in found:
        if name not in expected:
            return f"the model's group {name!r} is missing from the ticket; {hint}"
    return f"the groups are listed in another order; {hint}"


def _check_widths(handles: list[GroupHandle], ticket: Ticket) -> None:
    for handle in handles:
        error = width_error(handle, len(ticket.kept[handle.info.name]))
        if error is not None:
            raise UserError(f"{error}; torch-pruning cannot slim this architecture")


def _check_forward(model: nn.Module, example_inputs: torch.Tensor) -> None:
    """Run the slimmed model once; on failure name the layer that failed."""
    failure = forward_error(model, example_inputs)
    if failure is not None:
        raise UserError(
            f"the slimmed model fails at layer {failure[0]!r} ({failure[1]}); "
            "torch-pruning cannot slim this architecture"
        )


def _zero(graph: tp.DependencyGraph, dep: tp.Dependency, idxs: list[int]) -> None:
    """Zero the parameter slices ``dep``'s torch-pruning handler would remove for ``idxs``."""
    module, kind = dep.target.module, dep.target.type
    index = torch.as_tensor(idxs, dtype=torch.long)
    if kind == ops.OPTYPE.BN and not module.affine:
        return
    if kind in (ops.OPTYPE.BN, ops.OPTYPE.DEPTHWISE_CONV, ops.OPTYPE.PRELU) or (
        kind in (ops.OPTYPE.CONV, ops.OPTYPE.LINEAR)
        and graph.is_out_channel_pruning_fn(dep.handler)
    ):
        for param in _weight_and_bias(module):
            if kind != ops.OPTYPE.PRELU or param.numel() > 1:
                param[index.to(param.device)] = 0
    elif kind == ops.OPTYPE.LINEAR:
        module.weight[:, index.to(module.weight.device)] = 0
    elif kind == ops.OPTYPE.CONV:
        # weight is (out, in / groups, ...): input channel i feeds only the outputs of its group
        per_group_in = module.weight.shape[1]
        per_group_out = module.out_channels // module.groups
        for i in idxs:
            group, position = divmod(i, per_group_in)
            module.weight[group * per_group_out : (group + 1) * per_group_out, position] = 0


def _weight_and_bias(module: nn.Module) -> Iterator[torch.Tensor]:
    for attr in ("weight", "bias"):
        param = getattr(module, attr, None)
        if param is not None:
            yield param

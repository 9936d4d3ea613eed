"""What a ticket's slim network costs, counted from the channel groups without slimming.

Slimming a copy and counting it with fvcore takes seconds for a ResNet-50; a budget search
(:mod:`ebcompress.channels.budget`) needs the cost of dozens of candidate tickets per draw.
:class:`CostModel` gets it in about a millisecond: one eval-mode forward pass with hooks
records every convolution, linear, BatchNorm and PReLU layer's input and output shapes once,
and the traced groups say which of each layer's input and output channels a ticket removes
(:class:`~ebcompress.channels.groups.ChannelUse`). A slim layer's cost is then fvcore's
formula on the kept widths, as :func:`ebcompress.count_flops` counts them (training mode):

- convolution: ``out_kept * (in_kept / groups) * kernel area * output positions``; a
  depthwise one (``groups == out_channels``) loses its groups with its channels, so
  ``out_kept * kernel area * output positions``; one with string padding (``"same"``)
  counts none, as in fvcore, whose trace shows it as ``aten::_convolution_mode``, an op it
  has no count for (so ``count_flops`` leaves out e.g. ConvMixer's depthwise layers);
- linear: ``out_kept * in_kept * leading positions``;
- BatchNorm: 5 operations per element with an affine transform, 4 without;
- adaptive average pooling (a module): one per input element, its channels those of the
  counted layer that takes its output (the classifier after the global pool);

and the parameters those layers hold (weights, biases, BN scales and shifts, PReLU slopes).
Everything else is held at its dense value: all other parameters (layers in no group do not
change), and, once :meth:`CostModel.calibrate` is given the dense network's counted MACs,
the MACs fvcore counts outside those layers (functional pooling, upsampling, attention
products, norms of groups kept dense). The tests compare the model with ``count_flops`` of
the slimmed network: equal on the CIFAR VGGs and ResNets and timm's ResNets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from ebcompress.channels.groups import GroupHandle, first_sample, modes_preserved

# fvcore counts a BatchNorm in training mode as 5 operations per element (4 without affine).
_BN_OPS = {True: 5, False: 4}


@dataclass(frozen=True)
class SlimCost:
    """One sample's forward MACs and the parameter count of a (slim) network."""

    macs: int
    params: int

    def of(self, measure: str) -> int:
        """The count a budget's ``measure`` names: ``"macs"`` or ``"params"``."""
        return {"macs": self.macs, "params": self.params}[measure]


@dataclass(eq=False)  # hashed by identity
class _Layer:
    """One counted layer: its dense widths and where the groups' channels sit in it."""

    kind: str  # "conv", "depthwise", "linear", "bn", "prelu", "pool"
    channels_in: int
    channels_out: int
    per_channel: int  # weight entries per (output, input-per-group) pair: kernel area
    groups: int
    bias: bool
    counted: bool = True  # whether fvcore counts its MACs (see the module docstring)
    positions: int = 0  # summed over calls: output positions (conv), rows (linear), ...
    out_pos: list[np.ndarray] = field(default_factory=list)
    out_gidx: list[np.ndarray] = field(default_factory=list)
    in_pos: list[np.ndarray] = field(default_factory=list)
    in_gidx: list[np.ndarray] = field(default_factory=list)

    def freeze(self) -> None:
        for name in ("out_pos", "out_gidx", "in_pos", "in_gidx"):
            parts = getattr(self, name)
            setattr(self, name, np.concatenate(parts) if parts else np.zeros(0, np.int64))

    def cost(self, keep: np.ndarray) -> tuple[int, int]:
        """(MACs, params) of the layer with the channels ``keep`` (flat group mask) keeps."""
        out = self.channels_out - _removed(self.out_pos, self.out_gidx, keep, self.channels_out)
        if self.kind == "bn":
            return _BN_OPS[self.bias] * out * self.positions, 2 * out if self.bias else 0
        if self.kind == "prelu":
            return 0, out
        if self.kind == "pool":  # its channels are those its consumer takes in (in_pos)
            kept = self.channels_in - _removed(self.in_pos, self.in_gidx, keep, self.channels_in)
            return kept * self.positions, 0
        if self.kind == "depthwise":
            weights = out * self.per_channel
        else:
            kept_in = self.channels_in - _removed(self.in_pos, self.in_gidx, keep, self.channels_in)
            weights = out * (kept_in // self.groups) * self.per_channel
        macs = weights * self.positions if self.counted else 0
        return macs, weights + (out if self.bias else 0)


def _removed(pos: np.ndarray, gidx: np.ndarray, keep: np.ndarray, size: int) -> int:
    """How many distinct positions of a layer's ``size`` channels the mask removes."""
    if pos.size == 0:
        return 0
    hit = pos[~keep[gidx]]
    if hit.size == 0:
        return 0
    marks = np.zeros(size, dtype=bool)
    marks[hit] = True
    return int(marks.sum())


def _describe(module: nn.Module) -> _Layer | None:
    if isinstance(module, _ConvNd) and not module.transposed:
        depthwise = module.groups == module.out_channels and module.out_channels > 1
        return _Layer(
            "depthwise" if depthwise else "conv",
            module.in_channels,
            module.out_channels,
            # weight is (out, in / groups, *kernel): a depthwise layer keeps its dim 1
            math.prod(module.weight.shape[1 if depthwise else 2 :]),
            module.groups,
            module.bias is not None,
            counted=not isinstance(module.padding, str),
        )
    if isinstance(module, nn.Linear):
        return _Layer(
            "linear", module.in_features, module.out_features, 1, 1, module.bias is not None
        )
    if isinstance(module, _BatchNorm):
        n = module.num_features
        return _Layer("bn", n, n, 1, 1, module.affine)
    if isinstance(module, nn.PReLU) and module.num_parameters > 1:
        n = module.num_parameters
        return _Layer("prelu", n, n, 1, 1, False)
    if isinstance(module, _POOLS):
        return _Layer("pool", 0, 0, 1, 1, False)  # widths: from the first call
    return None


_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def _positions(layer: _Layer, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """What one call multiplies the layer's per-position work by (its batch included)."""
    if layer.kind in ("conv", "depthwise"):
        return output.shape[0] * math.prod(output.shape[2:])
    if layer.kind == "linear":
        return math.prod(inputs.shape[:-1])
    if layer.kind in ("bn", "pool"):
        return inputs.shape[0] * math.prod(inputs.shape[2:])
    return 0


class CostModel:
    """MACs and parameters of the slim network of any ticket of a traced model.

    Built by :class:`~ebcompress.channels.graph.ChannelGraph` from its groups (``handles``,
    each starting at ``starts[i]`` in the flat mask) and one forward pass of a sample of
    ``example_inputs`` (eval mode, no gradients, the modules' modes restored; nothing of the
    model changes). :meth:`cost` takes a ticket's flat keep mask.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        handles: Sequence[GroupHandle],
        starts: Sequence[int],
    ) -> None:
        layers = {m: layer for m in model.modules() if (layer := _describe(m)) is not None}
        consumer = self._record_positions(model, example_inputs, layers)
        for handle, start in zip(handles, starts, strict=True):
            for use in handle.uses:
                layer = layers.get(use.module)
                if layer is None:
                    continue
                pos, gidx = use.index.numpy(), start + use.root_index.numpy()
                if use.out or layer.kind in ("depthwise", "bn", "prelu"):
                    layer.out_pos.append(pos)
                    layer.out_gidx.append(gidx)
                else:
                    layer.in_pos.append(pos)
                    layer.in_gidx.append(gidx)
        for pool, taker in consumer.items():
            pool.in_pos, pool.in_gidx = taker.in_pos, taker.in_gidx
        # a pool whose consumer is not counted stays at its dense cost (``calibrate``)
        pools = [m for m, layer in layers.items() if layer.kind == "pool"]
        for module in pools:
            if layers[module] not in consumer:
                del layers[module]
        for layer in layers.values():
            layer.freeze()
        self._layers = list(layers.values())
        self._channels = int(sum(h.info.width for h in handles))
        everything = np.ones(self._channels, dtype=bool)
        macs, params = self._modelled(everything)
        self._other_params = sum(p.numel() for p in model.parameters()) - params
        self._other_macs = 0
        self._modelled_dense_macs = macs
        self.calibrated = False

    @staticmethod
    def _record_positions(
        model: nn.Module, example_inputs: torch.Tensor, layers: dict[nn.Module, _Layer]
    ) -> dict[_Layer, _Layer]:
        """Run one sample, summing each layer's positions over its calls; return each pool
        whose every call feeds a counted layer of as many input channels, with that layer.

        A pool's output reaches its consumer as a view (a flatten), so the consumer's input
        shares the output's storage; the outputs are held until the end, so that no other
        tensor can take their memory and pass for one."""
        pool_out: dict[int, tuple[_Layer, torch.Tensor]] = {}
        takers: dict[_Layer, set[_Layer | None]] = {}

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            inputs = args[0] if args else None
            if not (isinstance(inputs, torch.Tensor) and isinstance(output, torch.Tensor)):
                return
            layer = layers[module]
            layer.positions += _positions(layer, inputs, output)
            if layer.kind == "pool":
                width = inputs.shape[1] if inputs.ndim > 1 else 0
                if layer.channels_in not in (0, width):
                    takers.setdefault(layer, set()).add(None)  # widths differ between calls
                layer.channels_in = layer.channels_out = width
                pool_out[output.data_ptr()] = (layer, output)
                takers.setdefault(layer, set())
            elif inputs.data_ptr() in pool_out:
                pool = pool_out[inputs.data_ptr()][0]
                fits = layer.kind in ("conv", "linear") and layer.channels_in == pool.channels_in
                takers[pool].add(layer if fits else None)

        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with modes_preserved(model), torch.no_grad():
                model.eval()
                model(first_sample(example_inputs, model))
        finally:
            for handle in handles:
                handle.remove()
        return {
            pool: next(iter(found))
            for pool, found in takers.items()
            if len(found) == 1 and None not in found
        }

    def _modelled(self, keep: np.ndarray) -> tuple[int, int]:
        macs = params = 0
        for layer in self._layers:
            m, p = layer.cost(keep)
            macs, params = macs + m, params + p
        return macs, params

    def calibrate(self, dense_macs: int) -> None:
        """Hold the MACs ``count_flops`` counts outside the modelled layers constant: given
        the dense network's count (``count_flops(model, input_size).macs``), the difference
        to the model's own dense count is added to every slim count."""
        if isinstance(dense_macs, bool) or not isinstance(dense_macs, (int, np.integer)):
            raise TypeError(f"dense_macs must be an int (count_flops().macs), got {dense_macs!r}")
        if dense_macs <= 0:
            raise ValueError(f"dense_macs={dense_macs} must be positive")
        self._other_macs = int(dense_macs) - self._modelled_dense_macs
        self.calibrated = True

    @property
    def dense(self) -> SlimCost:
        """The dense network's cost (every channel kept)."""
        return self.cost(np.ones(self._channels, dtype=bool))

    def cost(self, keep: np.ndarray) -> SlimCost:
        """The slim network's cost for a flat keep mask (``Ticket.mask()``)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self._channels,):
            raise ValueError(
                f"cost: a mask of {keep.size} channels; the groups have {self._channels}"
            )
        macs, params = self._modelled(keep)
        return SlimCost(macs=macs + self._other_macs, params=params + self._other_params)

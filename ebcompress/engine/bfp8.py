"""8-bit block floating point (BFP8) training, emulated in plain torch: the paper's low precision.

You et al. (ICLR 2020, Sec. 4.3, Table 2 and Fig. 6: "EB Train LF / LL") search for the ticket
(LF) or search *and* retrain (LL) in 8-bit, following Wu et al. (ICLR 2018, "Training and
inference with integers in deep neural networks"). Their code emulated it with QPyTorch
(unmaintained) the way SWALP does (Yang et al., ICML 2019, "SWALP: Stochastic Weight Averaging
in Low-Precision Training"): 8-bit block floating point for weights, activations, gradients,
errors and momentum, with stochastic rounding. This module does the same in plain torch;
:data:`ebcompress.engine.precision.PRECISIONS` lists it as ``precision: bfp8``.

The format. A block of numbers shares one exponent ``E = floor(log2(max |x|))`` over its finite
entries; each entry is an 8-bit signed integer mantissa ``n`` in ``[-127, 127]`` and stands for
``n * step`` with ``step = 2 ** (E - 6)``: the block's largest magnitude (< ``2 ** (E + 1)``,
i.e. < 128 steps) keeps 7 significant bits. As in QPyTorch the range is symmetric (-128 unused).

* Blocks are slices along dim 0 (QPyTorch's ``dim=0``): one exponent per output channel / output
  feature for weights and weight gradients, per sample for activations and errors. A tensor with
  fewer than two dimensions (biases, BatchNorm scales and shifts) is one block: QPyTorch's
  ``dim=0`` would give each of its entries its own exponent, which is not block floating point.
* Rounding ``nearest`` (ties to even) is deterministic; ``stochastic`` rounds up with probability
  equal to the fractional part, so ``E[q(x)] = x``.
* Exact error bounds, with ``step`` as above: nearest ``|q(x) - x| <= step / 2`` wherever
  ``|x| <= 127.5 step``; the entries above that (within 1/256 of the block's maximum) are clipped
  to 127 steps, error < ``step``. Stochastic ``|q(x) - x| < step``, unbiased wherever
  ``|x| <= 127 step``. Quantising twice changes nothing (``q(q(x)) = q(x)``, both modes).
* Zeros stay zero; NaN and +-inf pass through unchanged and do not set their block's exponent
  (so the engine's NaN watch still sees them). Steps are kept within float32's normal range: a
  block whose largest magnitude is below ``2 ** -120`` is rounded on the grid ``2 ** -126``.

What is quantised, as in QPyTorch's ``OptimLP`` and ``Quantizer`` (SWALP's setup):

* weights: stored in BFP8, re-quantised after every optimiser step (stochastic; nearest once when
  training starts);
* gradients: before every optimiser step, after the data-parallel all-reduce and the BN-L1
  subgradient (stochastic);
* momentum: SGD's momentum buffer after every step (stochastic);
* activations: the inputs and outputs of every convolution and linear layer in the forward pass
  (stochastic while training, nearest in evaluation);
* errors: the gradients flowing back through those same points (stochastic).

The arithmetic of each layer still runs in float32: this reproduces an 8-bit datapath's numerics,
not its speed or energy. Weights, gradients and momentum are identical on every data-parallel rank,
so their rounding draws come from one generator seeded with rank 0's seed and checkpointed with
:meth:`BlockFloat8.state_dict`; activations and errors are per-rank data and draw from the global
RNG (which the engine checkpoints), so resumed runs are bit-exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from ebcompress.engine import distributed
from ebcompress.engine.precision import Precision
from ebcompress.errors import UserError

BITS = 8
ROUNDINGS = ("nearest", "stochastic")
STATE_FORMAT = 1
# Steps and their inverses stay normal float32 powers of two, so scaling by them is exact.
_MIN_STEP_EXP, _MAX_STEP_EXP = -126, 126
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _pow2(exponent: Tensor) -> Tensor:
    """Exact ``2.0 ** exponent`` in float32 for integer exponents in [-126, 127] (bit pattern)."""
    return ((exponent.to(torch.int32) + 127) << 23).view(torch.float32)


def block_step(x: Tensor, bits: int = BITS, block_dim: int | None = 0) -> Tensor:
    """The quantisation step of each block of ``x``, shaped to broadcast against ``x``.

    ``block_dim=0`` makes each slice along dim 0 a block (tensors with fewer than two dims are
    one block); ``None`` makes the whole tensor one block.
    """
    magnitude = torch.where(torch.isfinite(x), x.detach().float().abs(), 0.0)
    if block_dim is None or x.dim() < 2:
        largest = magnitude.amax().reshape([1] * x.dim())
    else:
        largest = magnitude.reshape(x.shape[0], -1).amax(dim=1)
        largest = largest.reshape(x.shape[0], *[1] * (x.dim() - 1))
    # frexp: largest = m * 2**e with m in [0.5, 1), so floor(log2(largest)) = e - 1.
    exponent = torch.frexp(largest).exponent - 1
    return _pow2((exponent - (bits - 2)).clamp(_MIN_STEP_EXP, _MAX_STEP_EXP))


def block_quantize(
    x: Tensor,
    bits: int = BITS,
    *,
    rounding: str = "stochastic",
    block_dim: int | None = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``x`` rounded to ``bits``-bit block floating point (see the module docstring).

    Returns a new tensor of ``x``'s dtype and shape whose finite entries are integer multiples
    ``n * step`` of their block's step with ``|n| <= 2 ** (bits - 1) - 1``. ``generator`` feeds
    stochastic rounding (default: the global RNG of ``x``'s device).
    """
    if rounding not in ROUNDINGS:
        raise UserError(f"block floating point rounding {rounding!r}: use one of {ROUNDINGS}")
    if not 2 <= bits <= 24:
        raise UserError(f"block floating point bits={bits}: use 2..24 (8 for BFP8)")
    if x.numel() == 0:
        return x.clone()
    step = block_step(x, bits, block_dim)
    values = x.detach().float()
    scaled = values * (1.0 / step)  # exact: 1/step is a power of two
    if rounding == "nearest":
        mantissa = torch.round(scaled)
    else:
        floor = torch.floor(scaled)
        draws = torch.rand(scaled.shape, generator=generator, device=x.device)
        mantissa = floor + (draws < scaled - floor).float()
    limit = float(2 ** (bits - 1) - 1)
    quantized = mantissa.clamp(-limit, limit) * step
    return torch.where(torch.isfinite(values), quantized, values).to(x.dtype)


class _QuantizeForwardAndBackward(torch.autograd.Function):
    """Quantise a value on the way forward and its gradient (the error) on the way back."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rounding: str) -> Tensor:
        return block_quantize(x, rounding=rounding)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return block_quantize(grad, rounding="stochastic"), None


def quantize_activation(x: Any, training: bool) -> Any:
    """BFP8 activation with a BFP8 error in backward; non-float values pass through."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return x
    rounding = "stochastic" if training else "nearest"
    if not torch.is_grad_enabled():
        return block_quantize(x, rounding=rounding)
    return _QuantizeForwardAndBackward.apply(x, rounding)


def _quantize_layer_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if not isinstance(module, _LAYERS):
        return None
    return tuple(quantize_activation(arg, module.training) for arg in args)


def _quantize_layer_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    if not isinstance(module, _LAYERS):
        return None
    return quantize_activation(output, module.training)


@contextlib.contextmanager
def quantized_layers() -> Iterator[None]:
    """While inside, every conv and linear layer's inputs and outputs (and the errors flowing
    back through them) are BFP8. Global module hooks, so no model keeps a trace afterwards."""
    handles = [
        module_hooks.register_module_forward_pre_hook(_quantize_layer_inputs),
        module_hooks.register_module_forward_hook(_quantize_layer_output),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class BlockFloat8(Precision):
    """``precision: bfp8``: the model and optimiser are kept in BFP8 (module docstring)."""

    name = "bfp8"

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        # Rounds the rank-replicated tensors (weights, gradients, momentum) identically on
        # every rank; seeded in prepare().
        self.generator = torch.Generator(device=device)

    def prepare(self, model: nn.Module) -> nn.Module:
        self.generator.manual_seed(distributed.broadcast_object(torch.initial_seed()))
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(block_quantize(param, rounding="nearest"))
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(self._quantize_gradients)
        optimizer.register_step_post_hook(self._quantize_weights_and_momentum)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return quantized_layers()

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"bfp8 state format {state.get('format')!r} is not {STATE_FORMAT}")
        self.generator.set_state(state["generator"])

    def _quantize(self, tensor: Tensor) -> None:
        tensor.copy_(block_quantize(tensor, generator=self.generator))

    @torch.no_grad()
    def _quantize_gradients(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        for param in _params(optimizer):
            if param.grad is not None:
                self._quantize(param.grad)

    @torch.no_grad()
    def _quantize_weights_and_momentum(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        for param in _params(optimizer):
            momentum = optimizer.state.get(param, {}).get("momentum_buffer")
            if momentum is not None:
                self._quantize(momentum)
            self._quantize(param)


def _params(optimizer: torch.optim.Optimizer) -> Iterator[Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]

"""What a refused call must look like, and the bad values the API fuzz tests draw (#17 item 8).

:func:`refused` is the one assertion of ``tests/test_api_fuzz.py`` and
``tests/deploy/test_export_fuzz.py``: a TypeError, ValueError or UserError raised by
ebcompress's own code (never from inside torch or torch-pruning), one line naming the argument
or the file, and the model left as it was.
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, currently_in_test_context, event, settings
from hypothesis import strategies as st
from torch import nn

import ebcompress as eb
from ebcompress.errors import UserError

FUZZ = settings(
    max_examples=12,  # per argument: the tests are parametrized by the argument fuzzed
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FILES = settings(FUZZ, max_examples=40)  # one test for all the ways to break a file
PACKAGE = Path(eb.__file__).resolve().parent
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _state(model: nn.Module) -> tuple:
    tensors = {key: value.clone() for key, value in model.state_dict().items()}
    return (
        tensors,
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def refused(call, *names: str, model: nn.Module | None = None) -> Exception:
    """``call()`` must raise TypeError, ValueError or UserError from ebcompress's own code, with
    one line naming one of ``names`` (case-insensitive), and leave ``model`` untouched."""
    before = _state(model) if model is not None else None
    with pytest.raises((TypeError, ValueError, UserError)) as info:
        call()
    error = info.value
    origin = Path(traceback.extract_tb(error.__traceback__)[-1].filename).resolve()
    assert origin.is_relative_to(PACKAGE), f"{type(error).__name__} from {origin}: {error}"
    message = str(error)
    assert message and "\n" not in message, message
    assert any(name.lower() in message.lower() for name in names), (names, message)
    if currently_in_test_context():  # the statistics then say which errors the examples got
        event(f"{type(error).__name__}")
    if model is not None:
        tensors, *flags = _state(model)
        assert flags == list(before[1:]) and tensors.keys() == before[0].keys()
        assert all(torch.equal(tensors[k], before[0][k]) for k in tensors), "the model changed"
    return error


# ----------------------------------------------------------------------------- strategies
NOT_A_NUMBER = st.one_of(
    st.booleans(), st.text(max_size=4), st.lists(st.integers(-3, 3), max_size=2), st.just({"v": 1})
)
NOT_AN_INT = st.one_of(NOT_A_NUMBER, st.floats(), st.just(torch.tensor(3)))
ARRAY = np.zeros((1, 3, 32, 32), dtype=np.float32)
NOT_A_MODULE = st.one_of(st.none(), NOT_AN_INT, st.just(ARRAY), st.just(torch.zeros(1, 3, 32, 32)))
NOT_A_PATH = st.one_of(st.none(), st.integers(), st.floats(), st.just([b"dir"]), st.just(ARRAY))


@st.composite
def bad_batches(draw) -> torch.Tensor:
    """Tensors vgg11_cifar cannot run: anything but (N >= 1, 3, >= 32, >= 32) in float32."""
    shape = draw(st.lists(st.integers(0, 40), max_size=5))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
    fits = len(shape) == 4 and shape[0] >= 1 and shape[1] == 3 and min(shape[2:]) >= 32
    assume(not (fits and dtype == torch.float32) and math.prod(shape) <= 30_000)
    return torch.ones(shape, dtype=dtype)


BAD_INPUTS = st.one_of(
    bad_batches(), st.none(), NOT_AN_INT, st.just(ARRAY), st.just((X,)), st.just(X.tolist())
)


def outside(low: float, high: float, *, low_in: bool, high_in: bool) -> st.SearchStrategy:
    """Floats (NaN and infinities too) outside the interval from ``low`` to ``high``, and
    things that are not numbers."""

    def inside(v: float) -> bool:
        return (low <= v if low_in else low < v) and (v <= high if high_in else v < high)

    return st.one_of(st.floats().filter(lambda v: not inside(v)), NOT_A_NUMBER)

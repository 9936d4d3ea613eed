"""The core Python API under bad input (#17 item 8): ``EarlyBird`` (construction, ``step``,
``load_state_dict``), ``draw_ticket``, ``slim``, ``masked_equivalent`` and ``count_flops``.

Hypothesis draws bad values for each argument of each entry point (one test per argument, so
every argument is tried), alters tickets and detector states; each call must be
:func:`bad_inputs.refused`. Named cases cover what needs a fixed setup. ``export`` and ``load``
are fuzzed in ``tests/deploy/test_export_fuzz.py``.

Models are tiny: vgg11_cifar at width_mult 0.125 (groups 8 to 64 wide) on 32 x 32 inputs, and
timm's test_resnet as the other architecture.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from bad_inputs import (
    BAD_INPUTS,
    FILES,
    FUZZ,
    NOT_A_MODULE,
    NOT_A_NUMBER,
    NOT_AN_INT,
    X,
    outside,
    refused,
)
from export_fakes import slim_case
from hypothesis import assume, event, given
from hypothesis import strategies as st
from torch import nn

import ebcompress as eb
from ebcompress.channels.draw_options import SCOPES
from ebcompress.errors import UserError


@pytest.fixture(scope="module")
def vgg():
    """Dense and slim vgg11_cifar, its ticket and spec (module-wide: tests never change them)."""
    return slim_case("vgg11_cifar", {"width_mult": 0.125})


@pytest.fixture(scope="module")
def resnet():
    return slim_case("timm:test_resnet")


# ----------------------------------------------------------------------------- bad values
LISTED_IGNORED = st.one_of(
    st.text(min_size=1, max_size=8),  # a bare name, not a list of names
    st.lists(st.text(min_size=1, max_size=8).filter(lambda s: s != "features"), min_size=1),
    st.lists(st.one_of(st.integers(), st.none(), st.lists(st.integers())), min_size=1),
    st.just([nn.Conv2d(3, 8, 3)]),  # a module of another model
    st.integers(min_value=1),
)
DRAW_OPTIONS = {
    "scope": st.one_of(st.text(max_size=8).filter(lambda s: s not in SCOPES), st.none()),
    "min_keep": st.one_of(st.integers(max_value=0), NOT_AN_INT, st.none()),
    "round_to": st.one_of(st.integers(max_value=0), NOT_AN_INT),
    "max_group_ratio": st.one_of(outside(0, 1, low_in=False, high_in=True), st.none()),
    "ignored_layers": st.one_of(LISTED_IGNORED, st.none(), st.just(0)),
    "model": NOT_A_MODULE,
    "example_inputs": BAD_INPUTS,
}
EARLYBIRD = {
    **DRAW_OPTIONS,
    "ratio": st.one_of(
        outside(0, 1, low_in=False, high_in=False),
        st.none(),
        st.lists(st.floats().filter(lambda v: not 0 < v < 1), min_size=1, max_size=2),
        st.sampled_from([[], [0.3, 0.3], [0.3, "0.5"]]),
    ),
    "epsilon": st.one_of(outside(0, 1, low_in=False, high_in=True), st.none()),
    "window": st.one_of(st.integers(max_value=1), NOT_AN_INT, st.none()),
    "sparsity": st.one_of(outside(0, math.inf, low_in=True, high_in=False), st.none()),
    "min_search_epochs": st.one_of(st.integers(max_value=-1), NOT_AN_INT, st.none()),
    "num_classes": st.one_of(st.integers(max_value=1), NOT_AN_INT),
    "chance": outside(0, 1, low_in=True, high_in=False),
    "learning_margin": outside(0, 1, low_in=False, high_in=False),
}
DRAW = {
    **DRAW_OPTIONS,
    "ratio": st.one_of(outside(0, 1, low_in=True, high_in=False), st.none(), st.just([0.3])),
}
NAMED = {
    "ignored_layers": "ignored",
    "graph_ignored_layers": "ignored",
    "learning_margin": "margin",
}


# ----------------------------------------------------------------------------- EarlyBird, draw
@pytest.mark.parametrize("name", EARLYBIRD)
@FUZZ
@given(data=st.data())
def test_earlybird_refuses_every_bad_argument(vgg, name, data) -> None:
    arguments = {"model": vgg.dense, "example_inputs": X, "ratio": 0.3}
    arguments[name] = data.draw(EARLYBIRD[name], label=name)
    refused(lambda: eb.EarlyBird(**arguments), NAMED.get(name, name), model=vgg.dense)


@pytest.mark.parametrize("name", DRAW)
@FUZZ
@given(data=st.data())
def test_draw_ticket_refuses_every_bad_argument(vgg, name, data) -> None:
    arguments = {"model": vgg.dense, "ratio": 0.3, "example_inputs": X}
    arguments[name] = data.draw(DRAW[name], label=name)
    refused(lambda: eb.draw_ticket(**arguments), NAMED.get(name, name), model=vgg.dense)


@pytest.fixture(scope="module")
def graph(vgg) -> eb.ChannelGraph:
    return eb.ChannelGraph(vgg.dense, X)


def _bird(vgg, graph, steps: int = 0) -> eb.EarlyBird:
    bird = eb.EarlyBird(vgg.dense, X, [0.3, 0.5], graph=graph, num_classes=10)
    for _ in range(steps):
        bird.step(train_top1=0.5, train_loss=1.0)
    return bird


def _progress(bird: eb.EarlyBird) -> tuple:
    return bird.learning.state_dict(), [bird.history.epochs(r) for r in bird.ratios]


STEP = {
    "epoch": st.one_of(st.integers(max_value=2), NOT_AN_INT),  # two epochs were recorded
    "train_top1": st.one_of(outside(0, 1, low_in=True, high_in=True), st.just(X)),
    "train_loss": st.one_of(NOT_A_NUMBER, st.just(torch.ones(2))),  # NaN is a diverged epoch
}


@pytest.mark.parametrize("name", STEP)
@FUZZ
@given(data=st.data())
def test_step_refuses_bad_metrics_and_epochs_and_records_nothing(vgg, graph, name, data):
    bird, value = _bird(vgg, graph, steps=2), data.draw(STEP[name], label=name)
    before = _progress(bird)
    refused(lambda: bird.step(**{name: value}), name)
    assert _progress(bird) == before


def test_a_detector_before_any_step_or_training(vgg, graph) -> None:
    bird = _bird(vgg, graph)
    refused(bird.latest_ticket, "step()")
    refused(lambda: bird.window_distance(0.7), "ratio")
    assert bird.window_distance() is None and bird.ticket is None
    # before any training step the network still gives a mask; nothing emerges from it
    assert bird.step() is False and bird.latest_ticket().epoch == 1


def test_a_state_from_another_model_is_refused_and_changes_nothing(vgg, graph, resnet) -> None:
    bird, theirs = _bird(vgg, graph, steps=1), eb.EarlyBird(resnet.dense, X, [0.3, 0.5])
    theirs.step()
    before = _progress(bird)
    for state in (theirs.state_dict(), [1, 2], None):
        refused(lambda s=state: bird.load_state_dict(s), "state")
    assert _progress(bird) == before


STATE_KEYS = ["format", "fingerprint", "ratios", "history", "latest", "emerged", "learning"]
STATE_KEYS += ["zero_init_bns", "history.window", "history.ratios", "history.num_channels"]
STATE_KEYS += ["learning.learned_epoch", "learning.best_top1", "learning.checked"]
JUNK = st.one_of(st.none(), NOT_AN_INT, st.integers(-3, 3), st.just(torch.zeros(2)))


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # torch, indexing a junk tensor
@FILES
@given(key=st.sampled_from(STATE_KEYS), junk=JUNK, delete=st.booleans())
def test_a_tampered_state_is_refused_whole_or_loads_and_runs(vgg, graph, key, junk, delete):
    bird = _bird(vgg, graph, steps=3)
    state, before = bird.state_dict(), _progress(bird)
    *parents, last = key.split(".")
    holder = state
    for part in parents:
        holder = holder[part]
    if delete:
        del holder[last]
    else:
        holder[last] = junk
    try:
        bird.load_state_dict(state)
    except (TypeError, ValueError, UserError):
        refused(lambda: bird.load_state_dict(state), "state")
        assert _progress(bird) == before  # no half-loaded state
        return
    event("loaded")
    assert isinstance(bird.step(), bool)  # what loaded is a state the detector can go on with


# ----------------------------------------------------------------------------- slim
def _altered(ticket: eb.Ticket, how: str, group: int, by: int) -> eb.Ticket:
    """``ticket`` with one thing wrong; built inside the call, as the Ticket checks too."""
    name = list(ticket.widths)[group % len(ticket.widths)]
    kept, widths = dict(ticket.kept), dict(ticket.widths)
    if how == "renamed":
        kept = {("bogus" if n == name else n): k for n, k in kept.items()}
        widths = {("bogus" if n == name else n): w for n, w in widths.items()}
    elif how == "dropped":
        del kept[name], widths[name]
    elif how == "width":
        widths[name] += by or 1
    elif how == "reordered":
        kept, widths = dict(reversed(kept.items())), dict(reversed(widths.items()))
    else:
        kept[name] = {
            "out_of_range": (*kept[name], widths[name] + abs(by)),
            "duplicate": (kept[name][0], *kept[name]),
            "unsorted": tuple(reversed(range(widths[name]))),
            "empty": (),
            "not_ints": tuple(float(i) + 0.5 for i in kept[name]),
        }[how]
    return replace(ticket, kept=kept, widths=widths, capped={}, fingerprint="")


HOWS = ["renamed", "dropped", "width", "reordered", "out_of_range", "duplicate", "unsorted"]
HOWS += ["empty", "not_ints"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("apply", [eb.slim, eb.masked_equivalent])
@FUZZ
@given(group=st.integers(0, 7), by=st.integers(-3, 3))
def test_slim_and_masked_equivalent_refuse_an_altered_ticket(vgg, apply, how, group, by):
    ticket = vgg.ticket
    refused(lambda: apply(vgg.dense, _altered(ticket, how, group, by)), "ticket", model=vgg.dense)


@pytest.mark.parametrize("apply", [eb.slim, eb.masked_equivalent])
def test_slim_refuses_tickets_of_other_architectures_and_non_tickets(apply, vgg, resnet):
    wider = slim_case("vgg11_cifar", {"width_mult": 0.25}).ticket  # the same names, other widths
    for ticket in (resnet.ticket, wider, replace(vgg.ticket, ignored_layers=("nowhere",))):
        refused(lambda t=ticket: apply(vgg.dense, t), "ticket", model=vgg.dense)
    for ticket in (vgg.ticket.to_dict(), None, "ticket.json", vgg.ticket.mask()):
        refused(lambda t=ticket: apply(vgg.dense, t), "ticket", model=vgg.dense)
    for model in (None, vgg.dense.state_dict(), [vgg.dense]):
        refused(lambda m=model: apply(m, vgg.ticket), "model")


SLIM = {"example_inputs": BAD_INPUTS.filter(lambda v: v is not None)}
SLIM["graph_ignored_layers"] = LISTED_IGNORED  # empty or None replays the ticket's record


@pytest.mark.parametrize("name", SLIM)
@FUZZ
@given(data=st.data())
def test_slim_refuses_bad_inputs_and_ignored_layers(vgg, name, data) -> None:
    value = data.draw(SLIM[name], label=name)
    ticket, expected = vgg.ticket, NAMED.get(name, name)
    refused(lambda: eb.slim(vgg.dense, ticket, **{name: value}), expected, model=vgg.dense)


# ----------------------------------------------------------------------------- count_flops
def _not_a_device(text: str) -> bool:
    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        return True
    return False


@st.composite
def bad_sizes(draw) -> list:
    """One-sample sizes vgg11_cifar cannot run: anything but (3, >= 32, >= 32)."""
    size = draw(st.lists(st.one_of(st.integers(-2, 40), NOT_AN_INT), max_size=5))
    ints = all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    assume(not (ints and len(size) == 3 and size[0] == 3 and min(size[1:]) >= 32))
    assume(not ints or math.prod(abs(s) for s in size) <= 15_000)
    return size


COUNT_FLOPS = {
    "model": NOT_A_MODULE,
    "input_size": st.one_of(bad_sizes(), BAD_INPUTS),
    "device": st.text(max_size=6).filter(_not_a_device),
}


@pytest.mark.parametrize("name", COUNT_FLOPS)
@FUZZ
@given(data=st.data())
def test_count_flops_refuses_every_bad_argument(vgg, name, data) -> None:
    arguments = {"model": vgg.dense, "input_size": (3, 32, 32)}
    arguments[name] = data.draw(COUNT_FLOPS[name], label=name)
    refused(lambda: eb.count_flops(**arguments), name, model=vgg.dense)

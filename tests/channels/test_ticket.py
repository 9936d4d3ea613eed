"""Ticket files: what slim depends on is typed, and tickets in the older layout still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket

X = torch.randn(1, 3, 8, 8)


def partly_dense() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(),  # GroupNorm: kept dense
        nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 4, 1), nn.Flatten(),
    ).eval()  # fmt: skip


def test_input_shape_and_kept_dense_are_typed_fields_written_at_the_top_level(tmp_path: Path):
    ticket = ChannelGraph(partly_dense(), X).draw(0.5)
    assert ticket.input_shape == (3, 8, 8) and set(ticket.kept_dense) == {"0"}
    data = json.loads(ticket.save(tmp_path / "ticket.json").read_text())
    assert data["input_shape"] == [3, 8, 8] and data["kept_dense"] == ticket.kept_dense
    assert not {"input_shape", "kept_dense"} & set(data["extra"])
    assert Ticket.load(tmp_path / "ticket.json") == ticket


def test_a_ticket_file_that_kept_them_in_extra_loads_and_slims_without_an_input(tmp_path: Path):
    model = partly_dense()
    ticket = ChannelGraph(model, X).draw(0.5)
    data = ticket.to_dict()
    for key in ("input_shape", "kept_dense"):  # the layout before the typed fields
        data["extra"][key] = data.pop(key)
    (tmp_path / "ticket.json").write_text(json.dumps(data))
    old = Ticket.load(tmp_path / "ticket.json")
    assert old == ticket  # extra is left with the annotations only
    with torch.no_grad():  # no example input: the recorded shape; the dense group replayed
        assert torch.equal(slim(model, old)(X), slim(model, ticket, X)(X))


def test_a_ticket_without_them_reads_as_none_recorded():
    data = Ticket(kept={"a": (0,)}, widths={"a": 2}, ratio=0.5).to_dict()
    del data["input_shape"], data["kept_dense"]
    ticket = Ticket.from_dict(data)
    assert ticket.input_shape is None and ticket.kept_dense == {}


@pytest.mark.parametrize("shape", [[3, "x"], 7])
def test_a_malformed_input_shape_is_one_line(shape: object):
    data = Ticket(kept={"a": (0,)}, widths={"a": 2}, ratio=0.5).to_dict()
    data["input_shape"] = shape
    with pytest.raises(Exception, match="not a valid ticket") as info:
        Ticket.from_dict(data)
    assert "\n" not in str(info.value)

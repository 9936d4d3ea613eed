import pytest
import timm
import torch
from torch import nn

from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.probe import MAX_PROBES, find_unslimmable
from ebcompress.channels.slim import masked_equivalent, slim
from ebcompress.errors import UserError

X = torch.randn(2, 3, 8, 8)


class SplitBlock(nn.Module):
    """FasterNet-style partial convolution: of ``expand``'s 8 channels the first 4 are
    convolved and the rest pass. The split sizes are fixed in ``forward``, so slimming
    ``expand`` breaks the block while torch-pruning happily maps its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.partial = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(torch.relu(self.bn(self.expand(x))), [4, 4], dim=1)
        return x + self.out(torch.cat([self.partial(first), rest], dim=1))


class TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(SplitBlock(), SplitBlock())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem_bn(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_probe_keeps_the_broken_group_and_its_analogs_dense_and_the_rest_prunable():
    model = TwoBlocks().eval()
    dense = find_unslimmable(model, X)
    assert set(dense) == {"blocks.0.expand", "blocks.1.expand"}
    assert "blocks.0.bn" in dense["blocks.1.expand"]  # found once, kept dense in both blocks
    graph = ChannelGraph(model, X)
    assert {"stem", "blocks.0.partial", "blocks.1.partial"} <= set(graph.widths)
    assert not set(dense) & set(graph.widths)
    assert set(dense) <= set(graph.kept_dense)


def test_a_probed_ticket_slims_exactly_and_records_what_stayed_dense():
    model = TwoBlocks().eval()
    ticket = ChannelGraph(model, X).draw(0.4, scope="uniform")
    assert "blocks.0.expand" in ticket.kept_dense
    slimmed = slim(model, ticket, X).eval()
    with torch.no_grad():
        torch.testing.assert_close(slimmed(X), masked_equivalent(model, ticket, X)(X))
    assert slimmed.blocks[0].partial.out_channels == len(ticket.kept["blocks.0.partial"]) < 4
    assert slimmed.stem.out_channels == len(ticket.kept["stem"]) < 8


def test_without_the_probe_the_same_ticket_cannot_be_slimmed():
    model = TwoBlocks().eval()
    ticket = ChannelGraph(model, X, probe=False).draw(0.4, scope="uniform")
    with pytest.raises(UserError, match="fails at layer 'blocks.0.bn'"):
        slim(model, ticket, X)


def test_probe_leaves_the_model_untouched():
    model = TwoBlocks().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_unslimmable(model, X)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_a_clean_architecture_needs_no_dense_group():
    model = timm.create_model("test_resnet", num_classes=3).eval()
    assert find_unslimmable(model, torch.randn(1, 3, 32, 32)) == {}


def test_probe_gives_up_after_max_probes_with_a_user_error(monkeypatch):
    import ebcompress.channels.probe as probe

    monkeypatch.setattr(probe, "_probe", lambda *args: {f"g{len(args[3])}": "breaks"})
    with pytest.raises(UserError, match=f"after {MAX_PROBES} rounds"):
        find_unslimmable(TwoBlocks().eval(), X)

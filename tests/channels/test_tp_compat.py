import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn

from ebcompress.channels.groups import trace_channel_groups
from ebcompress.channels.tp_compat import BoundedFlatten
from ebcompress.models import build_model


def test_a_concat_torch_pruning_cannot_size_keeps_its_groups_dense_instead_of_failing():
    # torch-pruning 1.6 raises TypeError building the graph of timm's CSP darknets
    model = timm.create_model("cs3darknet_s", num_classes=3).eval()
    trace = trace_channel_groups(model, torch.randn(1, 3, 64, 64))
    assert len(trace.handles) > 10
    # the cross-stage concat is what torch-pruning cannot map: the layers feeding it stay dense
    assert "torch-pruning maps channel" in trace.kept_dense["stages.0.conv_exp.conv"]


class HeadsBlock(nn.Module):
    """Attention over 2 heads from a reshaped ``qkv``: torch-pruning's index mappings through
    these reshapes never settle, so forming ``qkv``'s group would not terminate."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(8, 24, 1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, 2, 4, h * w).unbind(1)
        attn = (q.transpose(-1, -2) @ k).softmax(dim=-1)
        x = x + (v @ attn.transpose(-1, -2)).reshape(b, 8, h, w)
        return self.head(torch.relu(self.bn(self.fc(x))).mean(dim=(2, 3)))


def test_a_group_torch_pruning_cannot_close_stays_dense_and_the_others_are_traced():
    trace = trace_channel_groups(HeadsBlock().eval(), torch.randn(1, 8, 4, 4))
    assert "does not settle" in trace.kept_dense["qkv"]
    assert [h.info.name for h in trace.handles] == ["fc"]


def test_torch_pruning_keeps_its_own_index_mapping_for_graphs_it_builds_itself():
    model = build_model("resnet20_cifar", num_classes=3, width_mult=0.25).eval()
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0])
    assert len(group) > 3  # the residual stream couples many layers
    assert not hasattr(graph, "_ebcompress_index_mapping")


def test_a_flatten_mapping_past_the_bound_is_refused_one_within_it_maps():
    small = BoundedFlatten(stride=49, reverse=False)
    assert len(small([_index(i) for i in range(512)])) == 512 * 49  # VGG's classifier input
    huge = BoundedFlatten(stride=1024, reverse=False)
    with pytest.raises(Exception, match="grows past"):
        huge([_index(i) for i in range(128)])


def _index(i: int) -> object:
    return tp._helpers._HybridIndex(idx=i, root_idx=i)

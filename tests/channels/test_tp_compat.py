import threading
from pathlib import Path

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping

from ebcompress.channels import tp_compat
from ebcompress.channels.graph import ChannelGraph
from ebcompress.channels.groups import trace_channel_groups
from ebcompress.channels.slim import slim
from ebcompress.channels.tp_compat import BoundedFlatten
from ebcompress.errors import UserError
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
    small = BoundedFlatten(index_mapping._FlattenIndexMapping(stride=49, reverse=False))
    assert len(small([_index(i) for i in range(512)])) == 512 * 49  # VGG's classifier input
    huge = BoundedFlatten(index_mapping._FlattenIndexMapping(stride=1024, reverse=False))
    with pytest.raises(Exception, match="grows past"):
        huge([_index(i) for i in range(128)])


def _library_functions() -> tuple[object, object]:
    return tp.dependency.group.Group.add_dep, index_mapping.update_index_mapping


def test_torch_pruning_is_stock_outside_ebcompress_calls_and_patched_only_inside():
    add_dep, update = _library_functions()
    # the library's own functions, as torch-pruning defines them
    assert add_dep.__module__ == "torch_pruning.dependency.group"
    assert update.__module__ == "torch_pruning.dependency.index_mapping"
    model = build_model("vgg11_cifar", num_classes=3, width_mult=0.125).eval()
    trace_channel_groups(model, torch.randn(1, 3, 32, 32))
    slim(model, ChannelGraph(model, torch.randn(1, 3, 32, 32)).draw(0.5, warn=False))
    assert _library_functions() == (add_dep, update)
    with tp_compat.patched():
        inside = _library_functions()
        assert inside[0] is not add_dep and inside[1] is not update
        with tp_compat.patched():  # re-entrant: the inner exit leaves the fixes installed
            pass
        assert _library_functions() == inside
    assert _library_functions() == (add_dep, update)


def test_a_users_graph_built_after_an_ebcompress_trace_is_stock_torch_pruning():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).eval()
    x = torch.randn(1, 3, 8, 8)
    trace = trace_channel_groups(model, x)
    ours = [m for dep in _deps(trace.graph) for m in dep.index_mapping]
    assert any(isinstance(m, BoundedFlatten) for m in ours)  # the classifier's flatten
    graph = tp.DependencyGraph().build_dependency(model, x)
    theirs = [m for dep in _deps(graph) for m in dep.index_mapping]
    assert not any(isinstance(m, BoundedFlatten) for m in theirs)
    assert any(type(m) is index_mapping._FlattenIndexMapping for m in theirs)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [1])
    linear = [item.idxs for item in group if item.dep.target.module is model[4]]
    assert linear == [list(range(36, 72))]  # channel 1's 6 x 6 features


def test_another_threads_torch_pruning_spends_nothing_of_an_ebcompress_budget():
    model = build_model("resnet20_cifar", num_classes=3, width_mult=0.25).eval()
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    sizes, errors = [], []

    def users_code() -> None:
        try:
            group = graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, [0])
            sizes.append(len(group))
        except Exception as exc:  # whatever it is, the test names it
            errors.append(exc)

    with tp_compat.patched(), tp_compat._grouping_budget(steps=0, indices=0):
        worker = threading.Thread(target=users_code)
        worker.start()
        worker.join()
    assert errors == [] and sizes[0] > 3


@pytest.mark.parametrize("version", ["1.7.0", "1.5.2", "2.0.0rc1", "unknown"])
def test_a_torch_pruning_release_the_fixes_do_not_know_is_one_line(monkeypatch, version):
    monkeypatch.setattr(tp, "__version__", version)
    stock = _library_functions()
    with pytest.raises(UserError) as info:
        trace_channel_groups(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert message == (
        f"torch-pruning {version} is installed, but ebcompress supports torch-pruning "
        ">=1.6,<1.7 only; run: pip install 'torch-pruning>=1.6,<1.7'"
    )
    assert _library_functions() == stock


def test_a_release_without_a_version_attribute_is_named_from_its_distribution(monkeypatch):
    monkeypatch.delattr(tp, "__version__")  # as in torch-pruning 1.5
    monkeypatch.setattr(tp_compat.metadata, "version", lambda name: "1.5.2")
    with (
        pytest.raises(UserError, match=r"^torch-pruning 1\.5\.2 is installed"),
        tp_compat.patched(),
    ):
        pass
    monkeypatch.setattr(tp_compat.metadata, "version", lambda name: "1.6.1")
    with tp_compat.patched():
        pass


def _deps(graph: tp.DependencyGraph) -> list:
    return [dep for node in graph.module2node.values() for dep in node.dependencies]


def _index(i: int) -> object:
    return tp._helpers._HybridIndex(idx=i, root_idx=i)


def test_the_supported_range_is_the_one_pyproject_pins():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"torch-pruning{tp_compat.SUPPORTED}"' in pyproject

import copy
import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

from ebcompress.channels.graph import CappedGroupsWarning, ChannelGraph, capped_summary, draw_ticket
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket, structure_fingerprint
from ebcompress.errors import UserError

X = torch.randn(2, 3, 8, 8)


class TwoConv(nn.Module):
    """conv1-bn1-relu-conv2-[bn2]-relu-pool-fc: two groups, conv1 (width1) and conv2 (width2)."""

    def __init__(self, width1: int = 4, width2: int = 6, bn2: bool = True, groups: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width1)
        self.conv2 = nn.Conv2d(width1, width2, 3, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(width2) if bn2 else nn.Identity()
        self.fc = nn.Linear(width2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _set_gammas(model: TwoConv, bn1: list[float], bn2: list[float]) -> None:
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor(bn1))
        model.bn2.weight.copy_(torch.tensor(bn2))


def test_global_ranking_removes_the_smallest_abs_gammas():
    model = TwoConv()
    _set_gammas(model, [0.9, 0.1, 0.5, -0.3], [0.2, -0.8, 0.05, 0.7, 0.6, 0.4])
    ticket = ChannelGraph(model, X).draw(0.4)  # 4 of 10: 0.05, 0.1, 0.2 and |-0.3|
    assert ticket.kept == {"conv1": (0, 2), "conv2": (1, 3, 4, 5)}
    assert ticket.num_kept == 6 and ticket.importance == "bn_gamma"


def test_groups_names_widths_and_fingerprint():
    graph = ChannelGraph(TwoConv(), X)
    assert graph.widths == {"conv1": 4, "conv2": 6}  # the head fc is no group
    assert graph.fingerprint == structure_fingerprint({"conv1": 4, "conv2": 6})
    assert graph.groups[0].bn_names == ("bn1",)
    assert graph.groups[1].member_names == ("conv2", "bn2", "fc")


def test_bn_modules_are_the_groups_batchnorms_once():
    model = TwoConv()
    assert ChannelGraph(model, X).bn_modules() == [model.bn1, model.bn2]


def test_residual_channels_form_one_group_and_the_head_is_not_pruned():
    model = timm.create_model("resnet18", num_classes=3)
    graph = ChannelGraph(model, torch.randn(1, 3, 32, 32))
    stream = graph.groups[0]
    assert stream.name == "conv1" and stream.width == 64
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv1"} <= set(stream.member_names)
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= set(stream.bn_names)
    assert "fc" not in graph.widths  # the head's input channels are pruned with layer4's stream
    assert [group.name for group in graph.groups if "fc" in group.member_names] == [
        "layer4.0.conv2"
    ]
    assert len(graph.groups) == 12 and sum(graph.widths.values()) == 2880


def test_equal_gammas_still_remove_exactly_round_ratio_n():
    model = TwoConv()
    _set_gammas(model, [1.0] * 4, [1.0] * 6)
    graph = ChannelGraph(model, X)
    for ratio in (0.1, 0.25, 0.3, 0.55, 0.8):
        assert graph.draw(ratio).num_kept == 10 - round(ratio * 10)
    # the index tie-break removes the lowest global indices first, never emptying conv1
    assert graph.draw(0.5).kept == {"conv1": (3,), "conv2": (2, 3, 4, 5)}


def test_no_group_is_emptied_and_min_keep_holds():
    graph = ChannelGraph(TwoConv(), X)
    ticket = graph.draw(0.99)
    assert all(len(kept) >= 1 for kept in ticket.kept.values())
    assert ticket.num_kept == 2
    ticket = graph.draw(0.99, min_keep=3)
    assert ticket.kept_counts() == {"conv1": 3, "conv2": 3}


def _sunk_group_model() -> TwoConv:
    """conv1's 20 scales all tiny (as zero-initialised BNs stay), conv2's 20 large."""
    model = TwoConv(width1=20, width2=20)
    _set_gammas(model, [0.001 * (i + 1) for i in range(20)], [1.0 + 0.01 * i for i in range(20)])
    return model


def test_the_default_cap_keeps_a_tenth_of_every_group_and_names_it():
    graph = ChannelGraph(_sunk_group_model(), X)
    with pytest.warns(CappedGroupsWarning, match=r"conv1 \(2/20, max_group_ratio\)"):
        ticket = graph.draw(0.5)  # 20 of 40 removed; conv1 may lose only 18
    assert ticket.kept == {"conv1": (18, 19), "conv2": tuple(range(2, 20))}
    assert ticket.capped == {"conv1": "max_group_ratio"}
    assert ticket.num_kept == 20


def test_a_cap_that_binds_is_named_even_when_round_to_rounds_past_it():
    graph = ChannelGraph(_sunk_group_model(), X)
    ticket = graph.draw(0.5, round_to=4, warn=False)  # conv1's floor 2 rounds up to 4
    assert ticket.kept_counts()["conv1"] == 4 and ticket.capped == {"conv1": "max_group_ratio"}


def test_max_group_ratio_one_is_the_papers_uncapped_global_threshold():
    model = _sunk_group_model()
    graph = ChannelGraph(model, X)
    with pytest.warns(CappedGroupsWarning, match="min_keep"):
        ticket = graph.draw(0.5, max_group_ratio=1.0)
    # the reference code's rule: keep every |gamma| above the 20th smallest of all 40 scales;
    # only the no-empty-group floor (min_keep=1) moves one removal from conv1 to conv2
    gammas = torch.cat([model.bn1.weight, model.bn2.weight]).abs().detach()
    threshold = gammas.sort().values[20 - 1]
    assert (gammas > threshold).sum() == 20
    assert ticket.kept_counts() == {"conv1": 1, "conv2": 19}
    assert ticket.capped == {"conv1": "min_keep"}


def test_a_loose_cap_changes_nothing_and_warns_nothing():
    model = TwoConv()
    _set_gammas(model, [0.9, 0.1, 0.5, -0.3], [0.2, -0.8, 0.05, 0.7, 0.6, 0.4])
    graph = ChannelGraph(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ticket = graph.draw(0.4, max_group_ratio=0.5)
    assert ticket.kept == graph.draw(0.4, max_group_ratio=1.0).kept
    assert ticket.capped == {}


def test_capped_groups_survive_the_ticket_file_and_warn_can_be_silenced(tmp_path):
    graph = ChannelGraph(_sunk_group_model(), X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ticket = graph.draw(0.5, max_group_ratio=0.5, warn=False)
    assert ticket.kept_counts()["conv1"] == 10 and ticket.capped == {"conv1": "max_group_ratio"}
    assert Ticket.load(ticket.save(tmp_path / "t.json")) == ticket
    assert "conv1 (10/20, max_group_ratio)" in capped_summary(ticket)


def test_min_keep_moves_the_removals_to_other_groups():
    model = TwoConv()
    _set_gammas(model, [0.01, 0.02, 0.03, 0.04], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    ticket = ChannelGraph(model, X).draw(0.5, min_keep=2)  # 5 removed, conv1 may lose only 2
    assert ticket.kept == {"conv1": (2, 3), "conv2": (3, 4, 5)}


def test_round_to_rounds_kept_counts_up_capped_at_width():
    model = timm.create_model("resnet18", num_classes=3)
    graph = ChannelGraph(model, torch.randn(1, 3, 32, 32))
    plain = graph.draw(0.37)
    rounded = graph.draw(0.37, round_to=8)
    for name, width in graph.widths.items():
        count = rounded.kept_counts()[name]
        assert count % 8 == 0 or count == width
        assert plain.kept_counts()[name] <= count < plain.kept_counts()[name] + 8
        assert set(plain.kept[name]) <= set(rounded.kept[name])  # re-adds the best removed ones


def test_uniform_scope_prunes_each_group_alike_global_does_not():
    model = TwoConv()
    _set_gammas(model, [0.01, 0.02, 0.03, 0.04], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    graph = ChannelGraph(model, X)
    uniform = graph.draw(0.5, scope="uniform")
    assert uniform.kept == {"conv1": (2, 3), "conv2": (3, 4, 5)}
    assert graph.draw(0.5).kept == {"conv1": (3,), "conv2": (2, 3, 4, 5)}


def test_group_without_bn_falls_back_to_weight_magnitude_pruned_on_its_own():
    model = TwoConv(bn2=False)
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.9, 0.1, 0.5, 0.3]))
        model.conv2.weight.copy_(torch.tensor([1.0, 5.0, 0.1, 2.0, 0.2, 3.0]).view(6, 1, 1, 1))
    graph = ChannelGraph(model, X)
    importance = graph.importance()
    l1 = model.conv2.weight.detach().abs().sum(dim=(1, 2, 3))
    torch.testing.assert_close(importance["conv2"], l1 / l1.mean())
    assert importance["conv1"].dtype == torch.float32
    ticket = graph.draw(0.5)  # bn group ranked alone (2 of 4), conv2 at ratio by its own L1
    assert ticket.kept["conv1"] == (0, 2)
    assert ticket.kept["conv2"] == (1, 3, 5)


def test_network_without_any_batchnorm_prunes_every_group_by_weight_magnitude():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    model(X)
    graph = ChannelGraph(model, X)
    assert graph.bn_modules() == []
    assert graph.draw(0.5).kept_counts() == {"0": 2, "2": 3}


def test_importance_override_is_ranked_globally_over_all_groups():
    graph = ChannelGraph(TwoConv(bn2=False), X)
    scores = {"conv1": torch.tensor([9.0, 8.0, 7.0, 6.0]), "conv2": torch.arange(6.0)}
    ticket = graph.draw(0.5, importance=scores)
    assert ticket.kept == {"conv1": (0, 1, 2, 3), "conv2": (5,)}
    assert ticket.importance == "custom"
    with pytest.raises(ValueError, match="conv2"):
        graph.draw(0.5, importance={"conv1": scores["conv1"], "conv2": torch.ones(5)})


def test_draw_is_deterministic_across_calls_and_copies():
    model = timm.create_model("resnet18", num_classes=3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.randint(0, 4, module.weight.shape) / 4)  # many ties
    x = torch.randn(1, 3, 32, 32)
    graph = ChannelGraph(model, x)
    ticket = graph.draw(0.4, epoch=3, model_name="resnet18")
    assert ticket == graph.draw(0.4, epoch=3, model_name="resnet18")
    assert ticket == ChannelGraph(copy.deepcopy(model), x).draw(0.4, epoch=3, model_name="resnet18")
    assert draw_ticket(model, 0.4, example_inputs=x).kept == ticket.kept
    assert ticket.epoch == 3 and ticket.model_name == "resnet18"
    assert ticket.extra == {
        "scope": "global",
        "min_keep": 1,
        "max_group_ratio": 0.9,
        "round_to": None,
    }
    assert ticket.input_shape == (3, 32, 32) and ticket.kept_dense == {}


def test_importance_reads_current_values_without_retracing():
    model = TwoConv()
    graph = ChannelGraph(model, X)
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([-2.0, 1.0, 0.0, 3.0]))
    torch.testing.assert_close(graph.importance()["conv1"], torch.tensor([2.0, 1.0, 0.0, 3.0]))


def test_grouped_conv_keeps_the_same_positions_in_each_slice():
    model = TwoConv(width1=8, width2=8, groups=2)  # conv1 feeds conv2 as two slices of 4
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]))
    graph = ChannelGraph(model, X)
    ticket = graph.draw(0.5, scope="uniform")
    # slice means: [0.2, 0.8, 0.3, 0.7] -> positions 1 and 3 in both slices
    assert ticket.kept["conv1"] == (1, 3, 5, 7)
    assert len(ticket.kept["conv2"]) % 2 == 0


def test_tracing_preserves_modes_and_parameters():
    model = TwoConv().train()
    model.bn2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ChannelGraph(model, X)
    assert model.training and model.bn1.training and not model.bn2.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_traces_even_under_no_grad():
    with torch.no_grad():
        assert ChannelGraph(TwoConv(), X).widths == {"conv1": 4, "conv2": 6}


def test_model_without_prunable_groups_is_a_user_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(UserError, match="has no prunable channel groups"):
        ChannelGraph(model, X)


def test_a_group_with_an_unsupported_layer_stays_dense_and_is_named():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 4, 1), nn.Flatten(),
    )  # fmt: skip
    graph = ChannelGraph(model, X)
    assert graph.widths == {"3": 6}
    assert "layer '1' (GroupNorm) cannot be channel-pruned" in graph.kept_dense["0"]
    ticket = graph.draw(0.5)
    assert ticket.kept_dense == graph.kept_dense
    slimmed = slim(model, ticket, X)
    assert slimmed[0].out_channels == 8 and slimmed[3].out_channels == 3


def test_only_unsupported_groups_is_a_user_error_naming_the_layer():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten()
    )
    with pytest.raises(UserError, match=r"no prunable channel groups.*layer '1' \(GroupNorm\)"):
        ChannelGraph(model, X)


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x) * self.scale).mean(dim=(2, 3))


def test_bare_parameter_scaling_channels_keeps_its_group_dense():
    with pytest.raises(UserError, match="kept dense: conv: parameter 'scale'"):
        ChannelGraph(LayerScale(), X)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ratio": 1.0}, "pruning ratio"),
        ({"ratio": -0.1}, "pruning ratio"),
        ({"ratio": 0.3, "scope": "local"}, "scope"),
        ({"ratio": 0.3, "min_keep": 0}, "min_keep"),
        ({"ratio": 0.3, "round_to": 0}, "round_to"),
        ({"ratio": 0.3, "max_group_ratio": 0.0}, "max_group_ratio"),
        ({"ratio": 0.3, "max_group_ratio": 1.5}, "max_group_ratio"),
    ],
)
def test_bad_draw_arguments_are_user_errors(options, match):
    graph = ChannelGraph(TwoConv(), X)
    with pytest.raises(UserError, match=match):
        graph.draw(**options)


def test_non_finite_importance_is_a_user_error():
    model = TwoConv()
    with torch.no_grad():
        model.bn2.weight[0] = float("nan")
    with pytest.raises(UserError, match="conv2"):
        ChannelGraph(model, X).draw(0.3)


def test_mask_is_a_flat_keep_mask_in_group_order():
    model = TwoConv()
    _set_gammas(model, [0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.05, 0.7, 0.6, 0.4])
    mask = ChannelGraph(model, X).draw(0.4).mask()
    assert np.array_equal(mask, [1, 0, 1, 0, 0, 1, 0, 1, 1, 1])

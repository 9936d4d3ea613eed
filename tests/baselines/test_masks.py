import pytest
import torch
from torch import nn

from ebcompress.baselines._common import channel_scores, group_layers
from ebcompress.baselines._masks import (
    WeightMaskCallback,
    classifier_name,
    full_ticket,
    global_magnitude_masks,
    masked_state,
    prunable_weights,
    weight_sparsity,
)
from ebcompress.channels.graph import ChannelGraph
from ebcompress.errors import UserError
from ebcompress.models import build_model

X16 = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_global_masks_remove_exactly_the_lowest_scores_with_stable_ties():
    scores = {"a": torch.tensor([[3.0, 1.0], [1.0, 5.0]]), "b": torch.tensor([1.0, 2.0, 0.5])}
    masks = global_magnitude_masks(scores, 3 / 7)  # removes 0.5 and two of the three 1.0s
    assert masks["a"].tolist() == [[True, False], [False, True]]
    assert masks["b"].tolist() == [True, True, False]  # b's 1.0 comes last in the stable order
    assert weight_sparsity(masks) == pytest.approx(3 / 7)


def test_global_masks_reject_a_ratio_outside_the_open_interval():
    with pytest.raises(UserError, match="prune.ratio"):
        global_magnitude_masks({"a": torch.ones(3)}, 1.0)


def test_prunable_weights_leave_out_the_classifier():
    net = _net()
    assert classifier_name(net) == "7"
    assert list(prunable_weights(net)) == ["0.weight", "3.weight"]
    vgg = build_model("vgg11_cifar", 10, 3, width_mult=0.25)
    names = list(prunable_weights(vgg))
    assert "fc.weight" not in names and len(names) == 8


def test_masked_state_zeroes_only_masked_entries_of_a_copy():
    net = _net()
    state = net.state_dict()
    mask = torch.rand(state["0.weight"].shape) > 0.5
    out = masked_state(state, {"0.weight": mask})
    assert torch.equal(out["0.weight"][mask], state["0.weight"][mask])
    assert bool((out["0.weight"][~mask] == 0).all())
    assert not bool((state["0.weight"][~mask] == 0).any())  # the original is untouched
    with pytest.raises(KeyError):
        masked_state(state, {"nope.weight": mask})


def test_mask_callback_keeps_masked_weights_exactly_zero_under_momentum_and_decay():
    net = _net()
    weights = prunable_weights(net)
    gen = torch.Generator().manual_seed(1)
    masks = {name: torch.rand(w.shape, generator=gen) > 0.6 for name, w in weights.items()}
    callback = WeightMaskCallback(masks)
    before = {name: w.detach().clone() for name, w in weights.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    for _ in range(6):
        x, y = torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        callback.after_backward(net)
        opt.step()
    for name, w in weights.items():
        assert bool((w[~masks[name]] == 0).all()), name
        assert not torch.signbit(w[~masks[name]]).any()  # +0.0, not -0.0
        assert not torch.equal(w[masks[name]], before[name][masks[name]])  # survivors train


def test_mask_callback_resumes_with_the_checkpoint_masks_of_the_same_sparsity():
    net = _net()
    saved = {"0.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool)}
    saved["0.weight"][:4] = True
    state = WeightMaskCallback(saved).state_dict()
    redrawn = WeightMaskCallback({"0.weight": saved["0.weight"].flip(0)})  # same count
    redrawn.after_backward(net)  # binds to the model before the resume
    redrawn.load_state_dict(state)
    assert torch.equal(redrawn.masks["0.weight"], saved["0.weight"])
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    redrawn.after_backward(net)  # re-binds: the checkpoint's masks are the ones applied
    assert bool((net[0].weight[4:] == 0).all()) and bool((net[0].weight[:4] == 1).all())
    denser = WeightMaskCallback({"0.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)})
    with pytest.raises(UserError, match="sparsity"):
        denser.load_state_dict(state)
    with pytest.raises(UserError, match="structure"):
        WeightMaskCallback({"3.weight": saved["0.weight"]}).load_state_dict(state)


def test_full_ticket_keeps_every_channel():
    vgg = build_model("vgg11_cifar", 10, 3, width_mult=0.25)
    graph = ChannelGraph(vgg, X16)
    ticket = full_ticket(
        graph, 0.5, importance="snip", epoch=0, model_name="v", weight_sparsity=0.5
    )
    assert ticket.pruned_fraction == 0.0 and ticket.num_kept == sum(graph.widths.values())
    assert ticket.extra == {"granularity": "unstructured", "weight_sparsity": 0.5}


def test_channel_scores_sum_each_channel_over_all_producers_relative_to_the_group_mean():
    net = build_model("resnet20_cifar", 10, 3)
    layers = group_layers(net, X16)
    magnitudes = {name: w.detach().abs() for name, w in prunable_weights(net).items()}
    scores = channel_scores(layers, magnitudes)
    graph = ChannelGraph(net, X16)
    assert list(scores) == list(graph.widths)
    assert [len(s) for s in scores.values()] == list(graph.widths.values())
    stem = layers["conv1"]
    assert len(stem.producers) == 4 and stem.producers[0] == "conv1"  # residual-coupled
    summed = sum(magnitudes[f"{p}.weight"].flatten(1).sum(1) for p in stem.producers)
    assert torch.allclose(scores["conv1"], summed / summed.mean())
    assert layers["layer1.0.conv1"].consumers == ("layer1.0.conv2",)


def test_channel_scores_are_comparable_across_layers_of_different_fan_in():
    vgg = build_model("vgg11_cifar", 10, 3, width_mult=0.25)
    layers = group_layers(vgg, X16)
    magnitudes = {name: w.detach().abs() for name, w in prunable_weights(vgg).items()}
    raw_means = [float(magnitudes[f"{g}.weight"].flatten(1).sum(1).mean()) for g in layers]
    assert max(raw_means) > 10 * min(raw_means)  # fan-in 27 vs 1,152: raw sums differ a lot
    scores = channel_scores(layers, magnitudes)
    for name, score in scores.items():
        assert float(score.mean()) == pytest.approx(1.0, rel=1e-5), name
        raw = magnitudes[f"{name}.weight"].flatten(1).sum(1)
        assert torch.equal(score.argsort(stable=True), raw.argsort(stable=True)), name


def test_channel_scores_leave_an_all_zero_group_at_zero():
    net = _net()
    layers = group_layers(net, torch.randn(1, 3, 6, 6))
    weights = prunable_weights(net)
    sensitivity = {name: torch.zeros_like(w) for name, w in weights.items()}
    scores = channel_scores(layers, sensitivity)
    assert all(bool((score == 0).all()) for score in scores.values())

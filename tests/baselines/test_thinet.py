import pytest
import torch
from torch import nn

from ebcompress.baselines.thinet import (
    contributions,
    fold_scale,
    greedy_channel_selection,
    least_squares_scale,
    reconstructable,
    reconstruction_error,
    sample_contributions,
)


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Conv2d, list[torch.Tensor]]:
    """conv-BN-ReLU feeding a second conv, with real (post-ReLU) activations."""
    torch.manual_seed(seed)
    consumer = nn.Conv2d(16, 12, 3, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), consumer)
    with torch.no_grad():  # trained-looking BN: channels of very different strength
        net[1].weight.copy_(torch.rand(16) * 2)
        net[1].bias.copy_(torch.randn(16) * 0.5)
    net.eval()
    images = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    return net, consumer, images


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(5, 4, 3, padding=1),
        nn.Conv2d(5, 4, 3, stride=2, padding=1, dilation=2),
        nn.Conv2d(5, 4, (1, 3), padding=(0, 2), bias=False),
    ],
)
def test_contribution_rows_sum_to_a_real_output_of_their_sample(conv):
    x = torch.randn(3, 5, 9, 7)
    rows = contributions(x, conv, 6, torch.Generator().manual_seed(0))
    assert rows.shape == (3 * 6, 5)
    bias = 0 if conv.bias is None else conv.bias.detach()[None, :, None, None]
    outputs = (conv(x).detach() - bias).flatten(1)  # (samples, every filter and position)
    for r, row in enumerate(rows):
        gap = (outputs[r // 6] - row.sum()).abs().min()
        assert gap < 1e-5


def test_linear_contributions_are_weight_times_input():
    layer = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    rows = contributions(x, layer, 2, torch.Generator().manual_seed(0))
    assert rows.shape == (8, 5)
    products = x[:, None, :] * layer.weight.detach()[None]  # (samples, filters, channels)
    for r, row in enumerate(rows):
        assert (products[r // 2] - row).abs().sum(dim=1).min() < 1e-6


def test_reconstructable_layers():
    assert reconstructable(nn.Conv2d(8, 4, 3), 8)
    assert not reconstructable(nn.Conv2d(8, 8, 3, groups=8), 8)
    assert not reconstructable(nn.Conv2d(8, 4, 3, padding="same"), 8)
    assert reconstructable(nn.Linear(8, 2), 8)
    assert not reconstructable(nn.Linear(32, 2), 8)  # a flatten of 8 channels x 4 positions


def test_greedy_removes_channels_that_contribute_nothing_first():
    torch.manual_seed(0)
    contrib = torch.randn(50, 6)
    contrib[:, 4] = 0
    contrib[:, 1] = 1e-3 * contrib[:, 1]
    assert greedy_channel_selection(contrib, 2) == [4, 1]
    # the residual steers later choices: a channel opposing the removed sum is removed next
    opposed = torch.randn(50, 4)
    opposed[:, 2] = 0.5 * opposed[:, 0]
    opposed[:, 3] = -0.6 * opposed[:, 0] + 0.01 * opposed[:, 3]
    assert greedy_channel_selection(opposed, 2) == [2, 3]


def test_thinet_beats_random_choice_and_least_squares_improves_it():
    net, consumer, images = _pair()
    contrib = sample_contributions(net, consumer, images, 8, torch.Generator().manual_seed(0))
    assert contrib.shape == (2 * 16 * 8, 16)
    removed = greedy_channel_selection(contrib, 8)
    kept = sorted(set(range(16)) - set(removed))
    greedy = reconstruction_error(contrib, kept)
    gen = torch.Generator().manual_seed(1)
    random_errors = [
        reconstruction_error(contrib, sorted(torch.randperm(16, generator=gen)[:8].tolist()))
        for _ in range(20)
    ]
    assert greedy < min(random_errors)
    scale = least_squares_scale(contrib, kept)
    assert reconstruction_error(contrib, kept, scale) < greedy


def test_fold_scale_puts_the_least_squares_scale_into_the_consumer():
    net, consumer, images = _pair()
    x = net[:3](images[0]).detach()
    before = contributions(x, consumer, 4, torch.Generator().manual_seed(3))
    kept, removed = [0, 2, 3, 7, 9, 15], [1, 4, 5, 6, 8, 10, 11, 12, 13, 14]
    scale = least_squares_scale(before, kept)
    fold_scale(consumer, kept, removed, scale)
    after = contributions(x, consumer, 4, torch.Generator().manual_seed(3))
    assert torch.allclose(after[:, kept], before[:, kept] * scale.float(), atol=1e-5)
    assert bool((after[:, removed] == 0).all())
    assert bool((consumer.weight[:, removed] == 0).all())


def test_sample_contributions_stops_at_the_consumer_and_leaves_no_hook():
    net, consumer, images = _pair()
    calls = []
    net[0].register_forward_hook(lambda *_: calls.append(1))
    sample_contributions(net, net[0], images, 2, torch.Generator().manual_seed(0))
    assert calls == []  # the pre-hook stopped the pass before the first layer ran
    assert not consumer._forward_pre_hooks and not net[0]._forward_pre_hooks

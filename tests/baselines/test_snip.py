import pytest
import torch
from torch import nn

from ebcompress.baselines._masks import prunable_weights
from ebcompress.baselines.snip import connection_sensitivity


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen))
        for _ in range(n)
    ]


def test_sensitivity_has_the_weights_shapes_and_sums_to_one():
    net = _net()
    weights = prunable_weights(net)
    scores = connection_sensitivity(net, _batches(), weights)
    assert list(scores) == ["0.weight", "3.weight"]
    for name, score in scores.items():
        assert score.shape == weights[name].shape
        assert bool((score >= 0).all())
    assert float(sum(s.double().sum() for s in scores.values())) == pytest.approx(1.0, abs=1e-6)


def test_sensitivity_is_normalised_abs_gradient_times_weight_of_the_mean_loss():
    net = _net()
    batches = _batches()
    reference = _net()
    reference.train()
    for images, labels in batches:  # BN normalises per batch, so each batch is its own pass
        nn.functional.cross_entropy(reference(images), labels, reduction="sum").backward()
    raw = {name: (w.grad * w).abs().detach() for name, w in prunable_weights(reference).items()}
    total = sum(r.sum() for r in raw.values())
    scores = connection_sensitivity(net, batches, prunable_weights(net))
    for name in raw:
        assert torch.allclose(scores[name], raw[name] / total, rtol=1e-4, atol=1e-9)


def test_sensitivity_leaves_the_model_as_it_was():
    net = _net()
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    connection_sensitivity(net, _batches(), prunable_weights(net))
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN running statistics included
    assert all(p.grad is None for p in net.parameters())

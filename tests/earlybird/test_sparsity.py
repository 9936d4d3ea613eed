import pytest
import torch
from torch import nn

from ebcompress.earlybird.sparsity import BNL1Regularizer, bn_l1_penalty, gradient_scale
from ebcompress.errors import UserError


def _bn_with_grad(gamma: list[float], grad: list[float]) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(len(gamma))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
    bn.weight.grad = torch.tensor(grad)
    return bn


def test_adds_strength_times_sign_of_gamma_to_the_gradient():
    bn = _bn_with_grad([0.5, -2.0, 0.0, 3.0], [0.1, 0.2, 0.3, -0.4])
    BNL1Regularizer([bn], strength=0.01)()
    # sign(0) = 0: an exactly-zero scale gets no push.
    assert torch.allclose(bn.weight.grad, torch.tensor([0.11, 0.19, 0.3, -0.39]))
    assert bn.bias.grad is None


def test_several_bns_each_get_their_own_sign():
    a = _bn_with_grad([1.0, -1.0], [0.0, 0.0])
    b = nn.BatchNorm1d(3)
    with torch.no_grad():
        b.weight.copy_(torch.tensor([-0.2, 0.3, 0.0]))
    b.weight.grad = torch.ones(3)
    BNL1Regularizer([a, b], strength=0.5)()
    assert torch.equal(a.weight.grad, torch.tensor([0.5, -0.5]))
    assert torch.equal(b.weight.grad, torch.tensor([0.5, 1.5, 1.0]))


def test_strength_zero_is_a_no_op():
    bn = _bn_with_grad([0.5, -2.0], [0.1, 0.2])
    BNL1Regularizer([bn], strength=0.0)()
    assert torch.equal(bn.weight.grad, torch.tensor([0.1, 0.2]))


def test_skips_weights_without_grad_and_bns_without_affine():
    no_grad = _bn_with_grad([1.0, 1.0], [0.0, 0.0])
    no_grad.weight.grad = None
    no_affine = nn.BatchNorm2d(2, affine=False)
    with_grad = _bn_with_grad([-1.0, 2.0], [0.0, 0.0])
    BNL1Regularizer([no_grad, no_affine, with_grad], strength=0.1)()
    assert no_grad.weight.grad is None
    assert torch.allclose(with_grad.weight.grad, torch.tensor([-0.1, 0.1]))


def test_reads_the_current_weight_each_call():
    bn = _bn_with_grad([1.0], [0.0])
    regularize = BNL1Regularizer([bn], strength=1.0)
    bn.weight = nn.Parameter(torch.tensor([-3.0]))
    bn.weight.grad = torch.zeros(1)
    regularize()
    assert torch.equal(bn.weight.grad, torch.tensor([-1.0]))


def test_matches_autograd_of_the_l1_loss_term():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.normal_()
    (0.3 * bn.weight.abs().sum()).backward()
    reference = bn.weight.grad.clone()
    bn.weight.grad.zero_()
    BNL1Regularizer([bn], strength=0.3)()
    assert torch.allclose(bn.weight.grad, reference)


def test_negative_strength_is_a_user_error():
    with pytest.raises(UserError, match="sparsity strength"):
        BNL1Regularizer([], strength=-1e-4)


def test_penalty_is_the_detached_l1_norm_of_the_scales():
    a = _bn_with_grad([0.5, -2.0], [0.0, 0.0])
    b = _bn_with_grad([1.5], [0.0])
    penalty = bn_l1_penalty([a, nn.BatchNorm2d(3, affine=False), b])
    assert penalty.item() == pytest.approx(4.0)
    assert not penalty.requires_grad
    assert bn_l1_penalty([]).item() == 0.0


# ---------------------------------------------------------------------- mixed precision
def _scaled_step(strength: float, *, scaler: torch.amp.GradScaler | None, unscale_first: bool):
    """One step of a BN net under ``scaler`` (fp32 arithmetic: the scaling is what matters);
    returns the BN weight's gradient as the optimizer used it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -1.0, 2.0, -0.25]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: the gradient is the output
    loss = net(torch.randn(8, 3)).square().mean()
    regularize = BNL1Regularizer([net[1]], strength)
    if scaler is None:
        loss.backward()
        regularize()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(optimizer)
        regularize(scaler)
        scaler.step(optimizer)  # unscales what unscale_ did not
        scaler.update()
    return net[1].weight.grad.clone()


@pytest.mark.parametrize("unscale_first", [False, True])
def test_with_the_grad_scaler_the_penalty_survives_the_unscaling(unscale_first: bool):
    plain = _scaled_step(0.0, scaler=None, unscale_first=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled = _scaled_step(0.01, scaler=scaler, unscale_first=unscale_first)
    # the power-of-two scale cancels exactly: plain gradient + s * sign(gamma)
    expected = plain + 0.01 * torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert torch.allclose(scaled, expected, rtol=0, atol=1e-7)


def test_without_the_scaler_the_penalty_shrinks_by_the_scale_factor():
    # the failure the scaler argument exists for: the term is added to scaled gradients
    plain = _scaled_step(0.0, scaler=None, unscale_first=False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -1.0, 2.0, -0.25]))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale(net(torch.randn(8, 3)).square().mean()).backward()
    BNL1Regularizer([net[1]], 0.01)()  # no scaler given
    scaler.step(optimizer)
    added = net[1].weight.grad - plain
    assert torch.allclose(added.abs(), torch.full((4,), 0.01 / 2**12), atol=1e-8)


def test_a_disabled_scaler_or_none_adds_the_plain_term():
    bn = _bn_with_grad([0.5, -2.0], [0.0, 0.0])
    BNL1Regularizer([bn], 0.1)(torch.amp.GradScaler("cpu", enabled=False))
    assert torch.allclose(bn.weight.grad, torch.tensor([0.1, -0.1]))
    assert gradient_scale(None) == 1.0


def test_regularizing_after_the_scaler_stepped_is_a_user_error():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(net(torch.randn(4, 3)).sum()).backward()
    assert float(gradient_scale(scaler)) == 4.0
    scaler.step(optimizer)
    with pytest.raises(UserError, match=r"between scaler.scale\(loss\).backward\(\) and"):
        BNL1Regularizer([net[1]], 0.1)(scaler)
    scaler.update()  # the next step starts READY again
    assert float(gradient_scale(scaler)) == 4.0


def test_a_scaler_that_is_not_one_is_a_type_error():
    with pytest.raises(TypeError, match="GradScaler"):
        BNL1Regularizer([], 0.1)(2.0)

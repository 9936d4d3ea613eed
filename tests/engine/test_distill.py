"""Knowledge distillation in a training phase: the loss by hand, a frozen teacher, its cost."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_trainer import CLASSES, config, tiny_data, tiny_net

from ebcompress.cost.flops import TrainingLedger
from ebcompress.engine.distill import Distillation, DistillConfig
from ebcompress.engine.trainer import Trainer
from ebcompress.errors import UserError

BATCH = 5


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images for tiny_net, a student's logits and labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, 8, 8, generator=g)
    logits = 3 * torch.randn(BATCH, CLASSES, generator=g)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return images, logits, labels


def _distillation(alpha: float, temperature: float, teacher=None) -> Distillation:
    teacher = (teacher or tiny_net(seed=3)).eval()
    return Distillation(teacher, DistillConfig(alpha=alpha, temperature=temperature))


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 4.0), (0.3, 2.0), (0.9, 1.0)])
def test_the_loss_is_the_formula_by_hand(alpha, temperature) -> None:
    images, student, labels = _batch()
    distill = _distillation(alpha, temperature)
    hard = F.cross_entropy(student, labels)
    with torch.no_grad():
        teacher = distill.teacher(images)
    # KL(p_t || p_s) summed over classes, averaged over the batch
    p_t = torch.softmax(teacher.double() / temperature, dim=-1)
    log_p_s = torch.log_softmax(student.double() / temperature, dim=-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum() / BATCH
    expected = (1 - alpha) * hard.double() + alpha * temperature**2 * kl
    got = distill.loss(images, student, hard)
    assert got.dtype == torch.float32
    assert kl > 0.01  # the two networks disagree: the soft term is not trivially zero
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_alpha_zero_is_exactly_the_hard_loss() -> None:
    images, student, labels = _batch(1)
    hard = F.cross_entropy(student, labels)
    assert torch.equal(_distillation(0.0, 4.0).loss(images, student, hard), hard)


def test_alpha_one_against_itself_has_no_soft_term() -> None:
    images, _, labels = _batch(2)
    net = tiny_net(seed=4).eval()
    student = net(images)
    hard = F.cross_entropy(student, labels)
    loss = _distillation(1.0, 4.0, teacher=net).loss(images, student, hard)
    assert abs(loss.item()) < 1e-6 and hard.item() > 0.5  # the labels play no part


def test_the_soft_term_trains_the_student_only() -> None:
    images, _, labels = _batch(3)
    student_net, teacher = tiny_net(seed=5).eval(), tiny_net(seed=6).eval()
    logits = student_net(images)
    loss = _distillation(1.0, 2.0, teacher=teacher).loss(
        images, logits, F.cross_entropy(logits, labels)
    )
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student_net.parameters())


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"alpha": math.nan},
        {"temperature": 0.0},
        {"temperature": -2.0},
        {"temperature": math.nan},
    ],
)
def test_an_alpha_or_temperature_out_of_range_is_a_user_error(bad) -> None:
    field = next(iter(bad))
    with pytest.raises(UserError, match=rf"retrain\.distill\.{field}"):
        DistillConfig(**bad)


def test_the_ends_of_the_ranges_are_allowed() -> None:
    assert DistillConfig(alpha=0.0).alpha == 0.0
    assert DistillConfig(alpha=1.0, temperature=1e-3).temperature == 1e-3


def test_a_teacher_that_is_not_a_module_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        Distillation(lambda x: x, DistillConfig())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- in a Trainer


def _fit(distill: Distillation | None, *, epochs: int = 1, ledger=None) -> Trainer:
    cfg = config(epochs, (), macs_per_sample=10 if ledger is not None else None)
    trainer = Trainer(tiny_net(), tiny_data(), cfg, ledger=ledger, distill=distill)
    trainer.fit()
    return trainer


def test_a_fit_leaves_the_teacher_frozen_unchanged_and_in_eval_mode() -> None:
    teacher = tiny_net(seed=9).train()  # given in train mode: the trainer puts it in eval
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distill = Distillation(teacher, DistillConfig(alpha=0.7, temperature=3.0))
    trained = _fit(distill)
    assert not distill.teacher.training
    assert all(not p.requires_grad and p.grad is None for p in distill.teacher.parameters())
    after = distill.teacher.state_dict()
    for key, value in before.items():  # BatchNorm's running statistics too
        assert torch.equal(after[key], value), key
    # and the student did learn from it: not what it learns from the labels alone
    alone = _fit(None)
    a, b = trained.model.state_dict(), alone.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_the_ledger_charges_the_teachers_forwards_and_nothing_else() -> None:
    teacher_macs, epochs, samples = 7, 2, 64  # tiny_data(): 64 training samples
    plain, distilled = TrainingLedger(), TrainingLedger()
    _fit(None, epochs=epochs, ledger=plain)
    distill = Distillation(tiny_net(seed=9), DistillConfig(), macs_per_sample=teacher_macs)
    _fit(distill, epochs=epochs, ledger=distilled)
    a, b = plain.phases["search"], distilled.phases["search"]
    assert (a.samples, b.samples) == (epochs * samples, epochs * samples)
    assert (a.teacher_macs_per_sample, b.teacher_macs_per_sample) == (0, teacher_macs)
    assert b.teacher_flops == 2 * teacher_macs * epochs * samples
    assert b.training_flops - a.training_flops == 2 * teacher_macs * epochs * samples
    assert a.training_flops == 3 * 2 * 10 * epochs * samples


def test_a_ledger_needs_the_teachers_macs() -> None:
    distill = Distillation(tiny_net(seed=9), DistillConfig())  # macs_per_sample not given
    with pytest.raises(ValueError, match="teacher"):
        Trainer(
            tiny_net(), tiny_data(), config(macs_per_sample=10), ledger=TrainingLedger(),
            distill=distill,
        )  # fmt: skip

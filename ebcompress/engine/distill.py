"""Knowledge distillation in a training phase (Hinton, Vinyals & Dean, 2015, "Distilling the
Knowledge in a Neural Network").

The student's loss is ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(t / T) ||
softmax(s / T))``: the teacher's softened outputs on the same batch, the ``T^2`` keeping the
soft term's gradients on the hard term's scale (Hinton et al., Sec. 2). The teacher runs one
forward per sample, in eval mode, without gradients; the ledger charges those forward FLOPs
(``TrainingLedger.add(teacher_macs_per_sample=)``).

Hand-written rather than timm's ``LogitDistillationTask``: that task owns the whole training
step (it wraps the student in DDP itself) and reads the student's ``pretrained_cfg`` to
re-normalise inputs, which the CIFAR networks and the engine's own loop do not have. The
loss is timm's formula (``kl_div(..., log_target=True) * T**2``) with the complementary
weighting timm uses when only the task weight is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ebcompress.errors import UserError


@dataclass(frozen=True)
class DistillConfig:
    """``alpha``: the soft (teacher) term's share of the loss, in [0, 1]; ``temperature``:
    the softmax temperature T > 0 of both networks' outputs in that term."""

    alpha: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise UserError(f"retrain.distill.alpha {self.alpha} must lie in [0, 1], e.g. 0.5")
        if not self.temperature > 0:
            raise UserError(f"retrain.distill.temperature {self.temperature} must be > 0, e.g. 4")


class Distillation:
    """A frozen ``teacher`` whose outputs on each training batch join the student's loss per
    ``config``. ``macs_per_sample`` is the teacher's forward MACs (what the ledger charges per
    trained sample); the trainer checks it is given when it books a ledger."""

    def __init__(
        self, teacher: nn.Module, config: DistillConfig, *, macs_per_sample: int | None = None
    ) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"Distillation: teacher must be an nn.Module, got {type(teacher)}")
        self.teacher, self.config, self.macs_per_sample = teacher, config, macs_per_sample

    def to(self, device: torch.device, memory_format: torch.memory_format) -> Distillation:
        """The teacher on the training device, in eval mode, its parameters frozen."""
        self.teacher = self.teacher.to(device, memory_format=memory_format).eval()
        self.teacher.requires_grad_(False)
        return self

    def loss(
        self, images: torch.Tensor, student_logits: torch.Tensor, hard_loss: torch.Tensor
    ) -> torch.Tensor:
        """The distilled loss of one batch, from the student's logits and its hard loss."""
        alpha, temperature = self.config.alpha, self.config.temperature
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        soft = F.kl_div(
            F.log_softmax(student_logits.float() / temperature, dim=-1),
            F.log_softmax(teacher_logits.float() / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - alpha) * hard_loss + alpha * temperature**2 * soft

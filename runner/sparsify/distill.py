"""Knowledge distillation loss (Hinton et al. 2015), as oBERT uses it while pruning."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float, kd_weight: float
) -> torch.Tensor:
    """kd_weight * T^2 * KL(p_teacher,T || p_student,T) + (1 - kd_weight) * CE(student, labels).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes.
    Computed in fp32: under bf16 autocast the logits arrive in bf16.
    """
    student, teacher = student.float(), teacher.float()
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return kd_weight * temperature**2 * kl + (1 - kd_weight) * F.cross_entropy(student, labels)

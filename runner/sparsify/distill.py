"""Knowledge distillation losses: logits (Hinton et al. 2015, as oBERT uses it while pruning), and the hidden
states and attention maps of the layers a student keeps (TinyBERT, Jiao et al. 2020; distill.hidden_weight and
distill.attention_weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12  # log floor: padded keys get probability 0 from both models


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


def hidden_state_loss(
    student: tuple, teacher: tuple, layer_map: list[int], mask: torch.Tensor
) -> torch.Tensor:
    """TinyBERT's hidden-state term: the mean squared difference over real (unpadded) tokens between the
    student's embeddings and each of its layers' outputs and those of the teacher layer it stands for
    (hidden_states[0] is the embeddings; student layer j maps to teacher layer layer_map[j])."""
    pairs = [(0, 0), *((j + 1, t + 1) for j, t in enumerate(layer_map))]
    weights = mask.unsqueeze(-1).float()
    tokens = weights.sum() * student[0].shape[-1]
    return sum(
        ((student[s].float() - teacher[t].float()) ** 2 * weights).sum() / tokens for s, t in pairs
    ) / len(pairs)


def attention_loss(student: tuple, teacher: tuple, layer_map: list[int], mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the attention distributions, averaged over heads first (a pruned student
    keeps fewer heads than its teacher), per real query token, over the mapped layers."""
    rows = mask.float()
    total = 0.0
    for j, t in enumerate(layer_map):
        p_teacher, p_student = teacher[t].float().mean(1), student[j].float().mean(1)  # [batch, query, key]
        kl = (p_teacher * (p_teacher.clamp_min(EPS).log() - p_student.clamp_min(EPS).log())).sum(-1)
        total = total + (kl * rows).sum() / rows.sum()
    return total / len(layer_map)

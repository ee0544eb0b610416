"""Distillation losses as pure functions of tensors.

The trainer runs the forward passes and hands logits here, so cached teacher
outputs and a live teacher share one code path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kd_temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al. 2015).

    The T^2 factor keeps the gradient scale of the soft term comparable across
    temperatures. Inputs are (B, K); the result is the mean over the batch.
    """
    t = kd_temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                kd_temperature: float, alpha: float, ignore_index: int = -100) -> torch.Tensor:
    """alpha * KD term + (1 - alpha) * cross-entropy on the rows that have a gold label.

    ``labels`` holds ``ignore_index`` where no gold label exists (teacher-labelled
    transfer rows). With no teacher logits, or alpha = 0, this is plain cross-entropy.
    """
    has_gold = labels != ignore_index
    hard = (F.cross_entropy(student_logits[has_gold], labels[has_gold])
            if has_gold.any() else student_logits.sum() * 0.0)
    if teacher_logits is None or alpha == 0:
        return hard
    soft = kd_kl_loss(student_logits, teacher_logits, kd_temperature)
    return alpha * soft + (1 - alpha) * hard

"""Training objectives: the PARD cross-entropy (Eq. 8) and the optional distillation term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vocab import align_vocab
from .cod import IGNORE_INDEX


def pard_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every trained position of the packed batch — all K subtasks pooled (the sum of
    Eq. 8's per-subtask losses, weighted by how many positions COD kept of each). Labels are not shifted.

    logits (B, L, V), labels (B, L).
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def teacher_distributions(teacher_logits: torch.Tensor, position_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The teacher's logits for each packed position (B, L, V).

    A kept position at position p (subtask k, chain anchored at x_j) predicts x_{p+1}; the target's distribution for
    that token given the same real prefix is P_target(. | x_0..x_p) — its output at real position p. So one teacher
    forward over the real sequence, teacher_logits (B, N, V_t), serves all K subtasks: gather at position_ids.
    """
    teacher_logits = align_vocab(teacher_logits, vocab_size)
    index = position_ids.clamp(0, teacher_logits.shape[1] - 1)[..., None].expand(-1, -1, vocab_size)
    return teacher_logits.gather(1, index)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """T^2 * mean over masked-in positions of KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al.).

    student_logits, teacher_logits (B, L, V); mask (B, L) bool. The teacher side carries no gradient.
    """
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, L, V)
    log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).nan_to_num(0.0).sum(dim=-1)  # (B, L); 0 * -inf where p has no mass
    count = mask.sum().clamp_min(1)
    return (kl * mask).sum() / count * t * t

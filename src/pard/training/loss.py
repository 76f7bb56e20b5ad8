"""Training objectives: the PARD cross-entropy (Eq. 8) and the optional distillation term (from a teacher's logits,
or from the target's top-n distributions stored in the data)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vocab import align_vocab
from .cod import IGNORE_INDEX


def pard_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over every trained position of the packed batch — all K subtasks pooled (the sum of
    Eq. 8's per-subtask losses, weighted by how many positions COD kept of each). Labels are not shifted.

    logits (..., V), labels (...): (B, L, V) and (B, L), or (M, V) and (M,) for the trained positions alone.
    ``weights`` (like labels): a weighted mean instead, sum(w ce) / sum(w) (CAT weighting: :func:`cat_weights`).
    """
    if weights is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none")
    w = weights.reshape(-1).float() * (labels.reshape(-1) != IGNORE_INDEX)
    return (ce * w).sum() / w.sum().clamp_min(1e-6)


def cat_weights(gold_logprobs, anchors, depths):
    """PARD-2's CAT weights of a packed sample: the d-th mask of a chain anchored at x_j predicts x_{j+d+1} as if
    x_{j+1} .. x_{j+d} had been accepted, which the target does with probability prod_i p(x_{j+i}); weighting each
    position by it spends the draft's capacity where verification will reach. Real tokens (d = 0) weigh 1.

    gold_logprobs (N,): log p_target(x_t | x_<t) of each token of the sequence (0 where unknown: no information,
    no down-weighting); anchors, depths (L,) -> (L,) float32.
    """
    import numpy as np

    cumulative = np.concatenate([[0.0], np.cumsum(gold_logprobs)])  # cumulative[t] = sum of the first t
    last = np.minimum(anchors + depths, len(gold_logprobs) - 1)
    return np.exp(cumulative[last + 1] - cumulative[anchors + 1]).astype(np.float32)


def teacher_distributions(teacher_logits: torch.Tensor, position_ids: torch.Tensor,
                          trained: torch.Tensor) -> torch.Tensor:
    """The teacher's logits at the M trained positions of the packed batch (M, V), in row-major order.

    A kept position at position p (subtask k, chain anchored at x_j) predicts x_{p+1}; the target's distribution for
    that token given the same real prefix is P_target(. | x_0..x_p) — its output at real position p. So one teacher
    forward over the real sequence, teacher_logits (B, N, V), serves all K subtasks: read row p.
    position_ids, trained (B, L). Cut teacher_logits to the draft's vocabulary first (:func:`draft_columns`): this
    gather then moves V columns per position, not the teacher's V_t.
    """
    rows, cols = trained.nonzero(as_tuple=True)  # (M,), (M,)
    positions = position_ids[rows, cols].clamp(0, teacher_logits.shape[1] - 1)
    return teacher_logits[rows, positions]


def draft_columns(teacher_logits: torch.Tensor, vocab_size: int, token_ids: torch.Tensor | None) -> torch.Tensor:
    """The teacher's logits (..., V_t) over the draft's vocabulary: aligned to its ``vocab_size``, then restricted
    to a reduced head's ``token_ids`` (N,) if it has one (the softmax over them renormalises the teacher there)."""
    teacher_logits = align_vocab(teacher_logits, vocab_size)
    return teacher_logits if token_ids is None else teacher_logits[..., token_ids]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """T^2 * mean over masked-in positions of KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al.).

    student_logits, teacher_logits (..., V); mask (...) bool, default every position. The teacher side carries no
    gradient.
    """
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)  # (..., V)
    log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).nan_to_num(0.0).sum(dim=-1)  # (...); 0 * -inf where p has no mass
    if mask is None:
        return kl.mean() * t * t
    return (kl * mask).sum() / mask.sum().clamp_min(1) * t * t


def stored_kd_loss(
    student_logits: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor, temperature: float = 1.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * mean over rows with a stored entry of KL(p_top || softmax(student/T)), where p_top is the teacher's
    softmax(logits/T) restricted to its stored top-n tokens and renormalised there.

    student_logits (M, V); top_ids (M, n) columns of the student's logits, -1 where there is no entry (padding, or
    a token outside a reduced head: like :func:`draft_columns`, the teacher is renormalised over what the draft
    can say); top_logprobs (M, n) the teacher's log-probabilities at temperature 1. log p / T renormalised equals
    the tempered softmax over the same tokens, because log p and the logits differ by a per-row constant.
    """
    t = temperature
    valid = top_ids >= 0  # (M, n)
    log_q = F.log_softmax(student_logits.float() / t, dim=-1).gather(1, top_ids.clamp_min(0))  # (M, n)
    log_p = torch.where(valid, top_logprobs.float() / t, -1e4).log_softmax(dim=-1)  # finite, so no NaN gradients
    p = log_p.exp() * valid  # a row without entries weighs nothing
    kl = (p * (log_p - log_q)).sum(dim=-1)  # (M,)
    rows = valid.any(dim=-1).float()
    if weights is not None:  # CAT weighting, as for the cross-entropy
        rows = rows * weights.float()
    return (kl * rows).sum() / rows.sum().clamp_min(1e-6) * t * t

"""Conditional Drop-token (COD) sample building: paper section 3.2, Eq. 8-11, Figure 4 and Appendix B (Alg. 1).

One token sequence x_0..x_{N-1} becomes ONE packed training sample holding K subtasks:

* subtask 1 (depth 0): the real tokens x_0..x_{N-2} at positions 0..N-2; the token at position p predicts x_{p+1}
  (ordinary next-token training, Eq. 1);
* subtask k >= 2 (depth d = k-1): for an *anchor* j (the last real token seen), a chain of mask tokens at positions
  j+1..j+d; the d-th mask (position p = j+d) predicts x_{p+1} = x_{j+k} from x_0..x_j and the masks before it
  (Eq. 8) — exactly what the draft sees at inference (Eq. 7): real tokens, then masks at the next positions.

Anchors start at j = 0, so no position predicts a token from a context without a real token (the official
implementation trains such positions; we do not).

COD keeps, for subtask k, a fraction gamma_k = max(r^(k-1), r_min) of its N_k possible positions (Eq. 11; with
r_min = 0 the total is N (1 - r^K) / (1 - r), Eq. 10) — chosen only among anchors whose chain at depth d-1 was
kept, so every kept mask token has its whole prefix of key/value states (Figure 4c). Dropped positions simply do
not appear: the sample is the compact layout of Figure 4d. Counts are stochastically rounded so their expectation
is exactly N_k * gamma_k.

The attention structure is carried as two integer vectors instead of an (L, L) matrix:
``anchors`` (the position of the last real token each token may see) and ``depths`` (0 for real tokens, d for the
d-th mask of a chain). Token a may attend to token b iff
    (depth_b == 0 and anchor_b <= anchor_a)  or  (depth_b > 0 and anchor_b == anchor_a and depth_b <= depth_a);
:func:`attention_mask_from_structure` turns that into a boolean mask per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidArgumentError
from .config import CODConfig

IGNORE_INDEX = -100


@dataclass
class PackedSample:
    """One COD training sample. All arrays have the same length L (int64)."""

    input_ids: np.ndarray
    labels: np.ndarray  # IGNORE_INDEX where nothing is trained
    position_ids: np.ndarray
    anchors: np.ndarray  # position of the last real token visible to this token
    depths: np.ndarray  # 0 = real token, d = d-th mask token of its chain
    source_ids: np.ndarray | None = None  # x_0..x_{N-1}, what a distillation teacher reads
    # With stored target distributions (--distill-from data): each position's label's top-n, (L, n) each
    teacher_ids: np.ndarray | None = None  # int64, -1 = no entry
    teacher_logprobs: np.ndarray | None = None  # float32
    # Feature drafts: where each position's target feature comes from (int64, -1 = none): a global row of the
    # stored features, or a position in the chunk's own target pass. A position's feature is its anchor's, the
    # state that predicted the anchor token (real tokens: their own predecessor's; a mask chain: its anchor's).
    feature_rows: np.ndarray | None = None
    loss_weights: np.ndarray | None = None  # float32 per position (CAT weighting), None: every position weighs 1

    def __len__(self) -> int:
        return len(self.input_ids)


def build_cod_sample(
    tokens: Sequence[int],
    config: CODConfig,
    mask_token_ids: Sequence[int],
    rng: np.random.Generator,
    trainable: Sequence[bool] | None = None,
) -> PackedSample:
    """Algorithm 1 for one sequence.

    Args:
        tokens: x_0..x_{N-1} (N >= 2).
        mask_token_ids: one shared id, or one per depth (the paper's ablation); depth d uses ids[min(d, len)-1].
        rng: the source of the drop pattern (seed it for reproducibility).
        trainable: per token of ``tokens``, whether it is a training target (e.g. assistant tokens only);
            default all. A position whose label is not trainable is not kept in mask subtasks.
    """
    x = np.asarray(tokens, dtype=np.int64)
    n = len(x)
    if n < 2:
        raise InvalidArgumentError(f"a training sequence needs at least 2 tokens, got {n}")
    target_ok = np.ones(n, dtype=bool) if trainable is None else np.asarray(trainable, dtype=bool)

    # Subtask 1 (depth 0): the real tokens x_0..x_{N-2}, each predicting its successor.
    real = np.arange(n - 1)
    parts = [
        (
            x[:-1],
            np.where(target_ok[1:], x[1:], IGNORE_INDEX),
            real,
            real,
            np.zeros(n - 1, dtype=np.int64),
        )
    ]
    kept = real  # anchors whose chain is complete up to the previous depth
    for depth in range(1, config.num_draft_tokens):
        k = depth + 1
        label_at = np.arange(n) + depth + 1  # anchor j predicts x_{j+d+1}
        valid = (label_at < n) & target_ok[np.minimum(label_at, n - 1)]  # (N,) over anchors j
        wanted = _stochastic_round(int(valid.sum()) * config.retention_of(k), rng)
        candidates = kept[valid[kept]]
        if wanted == 0 or len(candidates) == 0:
            break
        kept = np.sort(rng.choice(candidates, size=min(wanted, len(candidates)), replace=False))
        mask_id = mask_token_ids[min(depth, len(mask_token_ids)) - 1]
        parts.append(
            (
                np.full(len(kept), mask_id, dtype=np.int64),
                x[kept + depth + 1],
                kept + depth,
                kept,
                np.full(len(kept), depth, dtype=np.int64),
            )
        )
    input_ids, labels, position_ids, anchors, depths = (np.concatenate(cols) for cols in zip(*parts))
    return PackedSample(input_ids, labels, position_ids, anchors, depths, x)


def _stochastic_round(value: float, rng: np.random.Generator) -> int:
    """floor(value) + Bernoulli(frac(value)): unbiased, so expected counts follow Eq. 11 exactly."""
    whole = int(np.floor(value))
    return whole + int(rng.random() < value - whole)


def attention_mask_from_structure(anchors: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask (B, L, L) — True where query a may attend to key b — from anchors/depths (B, L).

    Padding is marked with depth -1: it sees only itself (no fully masked rows) and nobody sees it.
    """
    a_anchor, b_anchor = anchors[:, :, None], anchors[:, None, :]  # (B, L, 1), (B, 1, L)
    a_depth, b_depth = depths[:, :, None], depths[:, None, :]
    sees_real = (b_depth == 0) & (b_anchor <= a_anchor) & (a_depth >= 0)
    sees_own_chain = (b_depth > 0) & (b_anchor == a_anchor) & (b_depth <= a_depth)
    eye = torch.eye(anchors.shape[1], dtype=torch.bool, device=anchors.device)[None]
    return sees_real | sees_own_chain | eye

"""PARD: a parallel draft proposes k tokens in ONE forward pass using mask tokens (paper section 3.1, Eq. 4 and 7).

Input per row: the committed tokens the draft has not read yet, then k-1 mask tokens at the following positions:

    [x_{n-a}, ..., x_{n-1}, m, m, ..., m]        logits at x_{n-1} -> d_1,  at the j-th m -> d_{j+1}

so d_{j+1} ~ P(x_{n+j} | x_0..x_{n-1}, m_0..m_{j-1}) (Eq. 7). The mask tokens' key/value entries are dropped
right after the pass: the real tokens at those positions are only known after verification and are read at the
start of the next step, alongside the accepted tokens.

A feature draft (:mod:`pard.target_features`) also reads, with each real token x_t, the target's hidden state
h_{t-1} (the state that predicted x_t, computed by the verification pass that accepted it), and with each mask the
feature of the last real token x_{n-1}: the target has not seen what the masks stand for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from ...errors import InvalidArgumentError
from ...mask_tokens import check_mask_ids
from ..lm import PAD_ID, LanguageModel, ragged_features, ragged_slices
from .base import DraftModelProposer, Proposal


class ParallelDraftProposer(DraftModelProposer):
    """One draft forward per step, whatever k (K_infer may exceed the K the draft was trained with)."""

    def __init__(
        self, draft: PreTrainedModel, mask_token_ids: Sequence[int], target_vocab_size: int, batch_size: int,
        report_confidence: bool = False, lm: LanguageModel | None = None,
    ):
        super().__init__(draft, target_vocab_size, batch_size, report_confidence, lm)
        if not mask_token_ids:
            raise InvalidArgumentError("a parallel draft needs at least one mask token id")
        check_mask_ids(mask_token_ids, draft.get_input_embeddings().num_embeddings)
        self.mask_token_ids = list(mask_token_ids)
        self._mask_ids: dict[int, torch.Tensor] = {}

    def mask_ids(self, count: int) -> torch.Tensor:
        """The ids of the first `count` mask placeholders m_0..m_{count-1}: one shared id by default; with distinct
        ids per position (the paper's ablation), positions past the last trained id reuse it."""
        if count not in self._mask_ids:  # built once per k: no host-to-device copy on the decoding path
            ids = [self.mask_token_ids[min(j, len(self.mask_token_ids) - 1)] for j in range(count)]
            self._mask_ids[count] = torch.tensor(ids, dtype=torch.long, device=self.lm.device)
        return self._mask_ids[count]

    def draft_logits(self, sequences: torch.Tensor, lengths: torch.Tensor, k: int,
                     features: torch.Tensor | None = None) -> torch.Tensor:
        """The PARD step's forward: logits (B, k, V) for d_1..d_k, from one pass over the unread tokens + k-1 masks
        (with ``features`` (B, L, F), each token's target feature; the masks take the last real token's)."""
        device = self.lm.device
        start = self.lm.lengths  # (B,)
        lengths = lengths.to(device)
        pending, counts = ragged_slices(sequences.to(device), start, lengths, PAD_ID)  # (B, W), (B,)
        batch_size = pending.shape[0]
        # Row i: pending[i, :counts[i]] then the k-1 masks then padding: (B, W + k - 1).
        inputs = torch.cat([pending, pending.new_full((batch_size, k - 1), PAD_ID)], dim=1)
        mask_slots = counts[:, None] + torch.arange(k - 1, device=device)  # (B, k-1)
        inputs.scatter_(1, mask_slots, self.mask_ids(k - 1).expand(batch_size, -1))
        pending_features = None
        if features is not None:
            features = features.to(device)
            size = features.shape[-1]
            last = features.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, size))  # (B, 1, F): x_{n-1}'s
            pending_features = torch.cat([ragged_features(features, start, lengths),
                                          last.new_zeros(batch_size, k - 1, size)], dim=1)  # (B, W + k - 1, F)
            pending_features.scatter_(1, mask_slots[..., None].expand(-1, -1, size), last.expand(-1, k - 1, -1))
        read = counts[:, None] - 1 + torch.arange(k, device=device)  # (B, k): last real token, then the masks
        # (B, k, V): the LM head runs at those k positions only
        logits = self.lm.forward(inputs, logits_at=read, features=pending_features)
        # Drop the masks' (and padding's) KV: keep exactly the real tokens read this step.
        self.lm.rollback(start + counts)
        self.draft_forwards += 1
        return logits

    def propose(self, sequences, lengths, k, sampling, generator=None, features=None):
        return Proposal(*self.pick(self.draft_logits(sequences, lengths, k, features), sampling, generator))

"""Vanilla speculative decoding (VSD): the draft proposes k tokens one forward at a time (paper Eq. 3 and 6)."""

from __future__ import annotations

import torch

from ..lm import PAD_ID
from .base import DraftModelProposer, Proposal


class AutoregressiveDraftProposer(DraftModelProposer):
    """k draft forwards per step: P(x_{n+j} | x_0..x_{n+j-1}) with each drafted token fed back (Eq. 6)."""

    def propose(self, sequences, lengths, k, sampling, generator=None):
        # First forward: the committed tokens not read yet (>= 1 per row), ragged, logits at each row's last one.
        logits = self.lm.feed(sequences, lengths, PAD_ID)  # (B, V)
        tokens, probs = [], []
        for j in range(k):
            token, prob = self.pick(logits, sampling, generator)  # (B,), (B, V) | None
            tokens.append(token)
            probs.append(prob)
            if j < k - 1:  # the last draft token is never fed: the next step starts from what the target accepts
                logits = self.lm.forward(token[:, None].to(self.lm.device))[:, -1]  # (B, V)
        self.draft_forwards += k
        draft_probs = None if sampling.greedy else torch.stack(probs, dim=1)  # (B, k, V)
        return Proposal(torch.stack(tokens, dim=1), draft_probs)

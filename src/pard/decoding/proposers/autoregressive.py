"""Vanilla speculative decoding (VSD): the draft proposes k tokens one forward at a time (paper Eq. 3 and 6)."""

from __future__ import annotations

import torch

from ..lm import PAD_ID
from .base import DraftModelProposer, Proposal


class AutoregressiveDraftProposer(DraftModelProposer):
    """k draft forwards per step: P(x_{n+j} | x_0..x_{n+j-1}) with each drafted token fed back (Eq. 6)."""

    def propose(self, sequences, lengths, k, sampling, generator=None, features=None, keep_drafting=None):
        """``keep_drafting(confidence (B, j))``, when given, is asked after each drafted token j < k whether one
        more is worth its draft pass (`-k auto`'s early stop); the proposal then has fewer than k tokens."""
        # First forward: the committed tokens not read yet (>= 1 per row), ragged, logits at each row's last one.
        logits = self.lm.feed(sequences, lengths, PAD_ID)  # (B, V)
        tokens, probs, confidence = [], [], []
        for j in range(k):
            token, prob, conf = self.pick(logits, sampling, generator)  # (B,), (B, V) | None, (B,)
            tokens.append(token)
            probs.append(prob)
            confidence.append(conf)
            self.draft_forwards += 1
            if j == k - 1 or keep_drafting is not None and not keep_drafting(torch.stack(confidence, dim=1)):
                break  # the last draft token is never fed: the next step starts from what the target accepts
            logits = self.lm.forward(token[:, None].to(self.lm.device))[:, -1]  # (B, V)
        draft_probs = None if sampling.greedy else torch.stack(probs, dim=1)  # (B, j, V)
        confidence = torch.stack(confidence, dim=1) if self.report_confidence else None  # (B, j)
        return Proposal(torch.stack(tokens, dim=1), draft_probs, confidence)

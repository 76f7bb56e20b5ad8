"""The proposer interface, and the shared base of proposers that run a draft language model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ...vocab import align_vocab
from ..cache import CachedLM
from ..lm import PAD_ID, LanguageModel
from ..sampling import SamplingConfig, logits_to_probs, sample


@dataclass
class Proposal:
    """Draft tokens for one step.

    draft_ids (B, k); draft_probs (B, k, V) — the distribution each token was sampled from (None when greedy);
    confidence (B, k) — q(d_i), the draft's probability of each token it proposed (what `-k auto` calibrates;
    None unless the proposer was asked to report it).
    """

    draft_ids: torch.Tensor
    draft_probs: torch.Tensor | None
    confidence: torch.Tensor | None = None

    def first(self, k: int) -> Proposal:
        """The first k tokens only (verifying a prefix of a proposal is verifying a shorter proposal)."""
        def cut(t):
            return t[:, :k] if t is not None else None

        return Proposal(self.draft_ids[:, :k], cut(self.draft_probs), cut(self.confidence))


class Proposer(ABC):
    """Proposes k tokens to follow each row's committed tokens.

    The engine owns the committed tokens: ``sequences`` (B, L) holds row i's tokens at [0, lengths[i]) (the prompt
    then everything accepted so far). A proposer keeps whatever state it needs (a KV cache) and is told, after
    verification, how many leading tokens of each row are still known to be right.
    """

    draft_forwards: int = 0  # draft model forward passes so far (0 for model-free proposers)

    @abstractmethod
    def prefill(self, sequences: torch.Tensor, lengths: torch.Tensor, features: torch.Tensor | None = None) -> None:
        """Read the prompts before the first step (everything but each row's last token). ``features`` (B, L, F):
        the target's feature of each committed token (h_{t-1} for token t), for a draft that reads them."""

    @abstractmethod
    def propose(
        self,
        sequences: torch.Tensor,
        lengths: torch.Tensor,
        k: int,
        sampling: SamplingConfig,
        generator: torch.Generator | None = None,
        features: torch.Tensor | None = None,
    ) -> Proposal:
        """Return k draft tokens per row following sequences[i, :lengths[i]] (``features`` as for prefill)."""

    @abstractmethod
    def rollback(self, num_valid: torch.Tensor) -> None:
        """Only the first num_valid[i] tokens the proposer has read for row i are still correct (B,)."""

    @abstractmethod
    def keep_rows(self, rows: torch.Tensor) -> None:
        """Finished rows leave the batch; keep these row indices."""

    @abstractmethod
    def admit(self, rows: torch.Tensor, sequences: torch.Tensor, lengths: torch.Tensor,
              features: torch.Tensor | None = None) -> None:
        """Rows ``rows`` (R,) start over on new prompts, sequences[r, :lengths[r]]: forget them, read the prompts
        (as ``prefill`` does)."""


class DraftModelProposer(Proposer):
    """Shared mechanics of proposers backed by a draft LM: its ragged KV cache, rollback, and token picking."""

    def __init__(self, draft: PreTrainedModel, target_vocab_size: int, batch_size: int,
                 report_confidence: bool = False, lm: LanguageModel | None = None):
        self.lm = lm if lm is not None else CachedLM(draft, batch_size)  # the engine passes a static one
        self.target_vocab_size = target_vocab_size
        self.report_confidence = report_confidence  # `-k auto` only: greedy confidence costs a softmax over V

    def prefill(self, sequences, lengths, features=None):
        self.lm.feed(sequences, lengths - 1, PAD_ID, need_logits=False, features=features)

    def rollback(self, num_valid):
        self.lm.rollback(torch.minimum(self.lm.lengths, num_valid.to(self.lm.device)))

    def keep_rows(self, rows):
        self.lm.keep_rows(rows)

    def admit(self, rows, sequences, lengths, features=None):
        self.lm.admit(rows, sequences, lengths - 1, features=features)

    def pick(
        self, logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Draft logits (..., V_draft) -> tokens (...), their sampling distribution (..., V_target) or None, and
        (with ``report_confidence``) the draft's probability of each token picked (...), else None.

        The draft's logits are cut or padded to the target's vocabulary (:func:`~pard.vocab.align_vocab`).
        """
        logits = align_vocab(logits.float(), self.target_vocab_size)
        if sampling.greedy:
            if not self.report_confidence:
                return logits.argmax(dim=-1), None, None
            top = logits.softmax(dim=-1).max(dim=-1)
            return top.indices, None, top.values
        probs = logits_to_probs(logits, sampling)
        if generator is not None:  # the engine's generator lives with the target, which may sit elsewhere
            probs = probs.to(generator.device)
        tokens = sample(probs, generator)
        confidence = probs.gather(-1, tokens[..., None])[..., 0] if self.report_confidence else None
        return tokens, probs, confidence


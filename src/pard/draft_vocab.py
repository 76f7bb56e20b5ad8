"""Reduced draft vocabularies: a draft LM head over the N most frequent tokens only (FR-Spec, arXiv 2502.14856).

For a small draft of a big-vocabulary family the LM head dominates the cost of a pass (SmolLM2: 49,152 x 576,
against 3.5M parameters per decoder layer). A head over the N tokens the family actually says most cuts that cost
by V/N while rarely losing a proposal.

Lossless by construction: the draft's distribution q is zero outside its subset (its logits there are -inf), so
greedy drafting never proposes those tokens and rejection sampling (Leviathan et al.: accept with min(1, p/q),
resample from norm(max(0, p - q))) stays exact — the target's p is untouched, and where q = 0 the residual is p.

In training the head scores only its N tokens (the loss is a softmax over the subset, labels mapped into it); in
evaluation it speaks the full vocabulary, so the engine, transformers' assisted generation and every tool that
reads ``logits[..., V]`` work unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

DRAFT_VOCAB_KEY = "draft_vocab_size"  # config key: N, the rows of a reduced head (absent = full vocabulary)


class SubsetHead(nn.Module):
    """An LM head over ``token_ids`` (N of the V vocabulary ids).

    weight (N, H); token_ids (N,) long, persistent (saved with the weights). forward: hidden (..., H) ->
    training: logits over the subset (..., N); eval: logits over the vocabulary (..., V), -inf outside the subset.
    """

    def __init__(self, weight: torch.Tensor, token_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.register_buffer("token_ids", token_ids.long())
        self.vocab_size = vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden @ self.weight.T  # (..., N)
        if self.training:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))  # (..., V)
        return full.index_copy_(-1, self.token_ids, logits)

    def to_subset(self, ids: torch.Tensor, missing: int) -> torch.Tensor:
        """Vocabulary ids -> positions in the subset (``missing`` for ids outside it, and for ``missing`` itself)."""
        lookup = torch.full((self.vocab_size + 1,), missing, dtype=torch.long, device=ids.device)
        lookup[self.token_ids] = torch.arange(len(self.token_ids), device=ids.device)
        return lookup[torch.where(ids >= 0, ids, self.vocab_size)]

    def extra_repr(self) -> str:
        return f"subset={len(self.token_ids)}, vocab_size={self.vocab_size}"


def subset_head_of(model) -> SubsetHead | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, SubsetHead) else None


def most_frequent_tokens(sequences: Iterable[Iterable[int]], n: int, always: Iterable[int] = ()) -> list[int]:
    """The ``n`` most frequent ids of ``sequences`` (ties broken by the smaller id), ``always`` included, sorted."""
    counts = Counter()
    for seq in sequences:
        counts.update(int(t) for t in seq)
    chosen = set(always)
    for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(chosen) >= n:
            break
        chosen.add(token)
    return sorted(chosen)


def attach_subset_head(model, token_ids: list[int]) -> SubsetHead:
    """Replace ``model``'s LM head by a SubsetHead over ``token_ids``, its rows copied from the current head (or the
    tied input embeddings), and record N in the config. Untied: the input embeddings keep every token."""
    config = model.config
    old = model.get_output_embeddings().weight.detach()  # (V, H)
    ids = torch.tensor(token_ids, dtype=torch.long)
    head = SubsetHead(old[ids].clone(), ids, old.shape[0])
    config.tie_word_embeddings = False
    if hasattr(config, "get_text_config"):
        config.get_text_config().tie_word_embeddings = False
    model.set_output_embeddings(head)
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None
    setattr(config, DRAFT_VOCAB_KEY, len(token_ids))
    return head


def empty_subset_head(config, dtype=torch.float32) -> SubsetHead:
    """A SubsetHead of the shape ``config`` records, to be filled by ``load_state_dict``."""
    n, hidden = getattr(config, DRAFT_VOCAB_KEY), config.hidden_size
    return SubsetHead(torch.zeros(n, hidden, dtype=dtype), torch.zeros(n, dtype=torch.long), config.vocab_size)

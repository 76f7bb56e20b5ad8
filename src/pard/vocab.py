"""Do a draft's token ids mean the same tokens to the target? Vocabulary checks and alignment of draft logits.

Both inference (the proposers) and training (distillation from a target) need :func:`align_vocab`, so it lives
here, below both.
"""

from __future__ import annotations

import torch

from .errors import VocabularyMismatchError


def vocab_size(model) -> int:
    """The size of the distributions the model emits: rows of the output projection, or the full vocabulary of a
    reduced head (see :mod:`pard.draft_vocab`)."""
    head = model.get_output_embeddings()
    return getattr(head, "vocab_size", None) or head.weight.shape[0]


def align_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Truncate or -inf-pad the last dimension of logits (..., V) to ``size``.

    Draft and target may pad their vocabularies differently (e.g. Qwen2.5 0.5B: 151,936 rows, 7B: 152,064): a token
    the target cannot emit is never proposed, and a distribution over the result stays a proper one.
    """
    extra = size - logits.shape[-1]
    if extra < 0:
        return logits[..., :size]
    if extra > 0:
        pad = logits.new_full((*logits.shape[:-1], extra), float("-inf"))
        return torch.cat([logits, pad], dim=-1)
    return logits


def check_tokenizers(target_tokenizer, draft_tokenizer) -> None:
    """Every token of the target's vocabulary must have the same id in the draft's (the draft may have more,
    e.g. an added mask token); else :class:`VocabularyMismatchError`."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    wrong = [tok for tok, i in target_vocab.items() if draft_vocab.get(tok) != i]
    if wrong:
        tok = min(wrong, key=lambda t: target_vocab[t])
        raise VocabularyMismatchError(
            f"the draft's tokenizer does not match the target's: {len(wrong)} of {len(target_vocab)} target "
            f"tokens are missing or numbered differently (e.g. {tok!r}: target id {target_vocab[tok]}, draft id "
            f"{draft_vocab.get(tok)}); target and draft must come from one model family"
        )


def check_compatible(target, draft, target_tokenizer=None, draft_tokenizer=None) -> None:
    """Raise :class:`VocabularyMismatchError` unless draft token ids mean the same tokens to the target.

    With both tokenizers, :func:`check_tokenizers` decides and the models' output sizes may differ (vocabulary
    padding). Without tokenizers, the output sizes must be equal.
    """
    if target_tokenizer is not None and draft_tokenizer is not None:
        check_tokenizers(target_tokenizer, draft_tokenizer)
        return
    if vocab_size(target) != vocab_size(draft):
        raise VocabularyMismatchError(
            f"target and draft vocabulary sizes differ ({vocab_size(target)} vs {vocab_size(draft)}) and no "
            "tokenizers were given to show they agree"
        )

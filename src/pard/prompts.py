"""Turning user text into prompt token ids, and knowing when a model is done (shared by generate, bench, ...)."""

from __future__ import annotations

from collections.abc import Mapping


def encode_prompt(tokenizer, text: str, *, chat_template: bool = True) -> list[int]:
    """Token ids of ``text``: wrapped as one user turn with the tokenizer's chat template when it has one (and
    ``chat_template`` is True), else tokenized as plain text (with the tokenizer's usual special tokens)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(text)["input_ids"])


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """Every id that ends generation: the tokenizer's EOS plus the model's generation config EOS id(s)."""
    ids = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    if isinstance(value, int):
        ids.add(value)
    elif value:
        ids.update(int(v) for v in value)
    return ids

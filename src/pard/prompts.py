"""Turning user text into prompt token ids, and knowing when a model is done (shared by generate, bench, ...)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import InvalidArgumentError


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template (the one place that unwraps what
    ``apply_chat_template`` returns: a list in transformers 4, a ``BatchEncoding`` in 5)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, text: str, *, chat_template: bool = True) -> list[int]:
    """Token ids of ``text``: wrapped as one user turn with the tokenizer's chat template when it has one (and
    ``chat_template`` is True), else tokenized as plain text (with the tokenizer's usual special tokens).

    Text that is not valid Unicode (e.g. a command-line argument with bytes that are not UTF-8, which Python keeps
    as lone surrogates) is refused with :class:`InvalidArgumentError`.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("the prompt is not valid UTF-8 text") from None
    if chat_template and has_chat_template(tokenizer):
        return render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
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

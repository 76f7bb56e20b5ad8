"""The mask-token policy: where a draft's mask id (PARD's ``m``, paper Eq. 7) is stored, read, checked and chosen.

One room for everything about the id that stands in for the tokens a parallel draft has not seen yet: the config
key official checkpoints and upstream vLLM read (``pard_token``), the other names drafts in the wild use, the range
check every consumer needs, and the rule `pard train` follows to pick (or add) one. It depends on nothing above it,
so decoding, training and export can all use it.
"""

from __future__ import annotations

from .errors import InvalidArgumentError, NotAParallelDraftError

PARD_TOKEN_KEY = "pard_token"  # the config key official PARD checkpoints and upstream vLLM read
SPD_TYPE = "pard"  # `spd_type` value that accompanies it
ADDED_MASK_TOKEN = "<|pard_mask|>"  # the special token `pard train --add-mask-token` adds
# Other names under which drafts in the wild store their mask token id.
ALTERNATE_MASK_KEYS = ("mask_token_id", "pard_mask_token_id", "pard_mask_token", "mask_id", "parallel_mask_token")


def mask_token_ids_of(config, key: str = PARD_TOKEN_KEY) -> list[int] | None:
    """The draft's mask token id(s) from ``config.<key>`` (an int, or a list for distinct ids per position)."""
    value = getattr(config, key, None)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def mark_parallel_draft(config, mask_ids: list[int]) -> None:
    """Record the mask id(s) in ``config`` the way vLLM and official checkpoints expect."""
    setattr(config, PARD_TOKEN_KEY, mask_ids[0] if len(mask_ids) == 1 else list(mask_ids))
    config.spd_type = SPD_TYPE


def check_mask_ids(mask_ids, rows: int, owner: str = "the draft") -> None:
    """Every mask id must index a row of ``owner``'s embedding table (``rows`` entries)."""
    bad = [i for i in mask_ids if not 0 <= i < rows]
    if bad:
        raise InvalidArgumentError(f"mask token id(s) {bad} outside {owner}'s embedding table (size {rows})")


def find_mask_token(config, mask_token_id: int | None = None, mask_key: str | None = None) -> tuple[int, str | None]:
    """The draft's single mask id and the config key it was found under (None when given explicitly)."""
    if mask_token_id is not None:
        return mask_token_id, None
    keys = [mask_key] if mask_key else [PARD_TOKEN_KEY, *ALTERNATE_MASK_KEYS]
    for key in keys:
        ids = mask_token_ids_of(config, key)
        if ids:
            if len(ids) > 1:
                raise InvalidArgumentError(
                    f"the draft uses distinct mask ids per position ({ids}); vLLM's parallel drafting takes one id"
                )
            return ids[0], key
    raise NotAParallelDraftError(
        f"no mask token id found in the draft's config (looked for {', '.join(keys)}); pass --mask-token-id ID "
        "or --mask-key NAME"
    )


def choose_mask_token(model, tokenizer, mask_token_ids: list[int] | None, add: bool) -> list[int]:
    """Pick the mask token id(s) for training, adding a token only when asked or when nothing can be reused.

    Order: explicit ids; ``add``; else an unused embedding row past the tokenizer's vocabulary (how the official
    Qwen2.5 drafts use 151665); else the tokenizer's own mask token; else a reserved special token
    (``<|reserved_special_token_*|>`` as in Llama-3); else a new special token (the embeddings grow by one row).
    """
    rows = model.get_input_embeddings().num_embeddings
    if mask_token_ids:
        check_mask_ids(mask_token_ids, rows, "the model")
        return list(mask_token_ids)
    if not add:
        if rows > len(tokenizer):
            return [len(tokenizer)]
        if getattr(tokenizer, "mask_token_id", None) is not None and tokenizer.mask_token_id < rows:
            return [tokenizer.mask_token_id]
        reserved = sorted(i for tok, i in tokenizer.get_vocab().items() if "reserved" in tok and i < rows)
        if reserved:
            return [reserved[-1]]
    from transformers import AddedToken

    tokenizer.add_tokens([AddedToken(ADDED_MASK_TOKEN, special=True, normalized=False)], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return [tokenizer.convert_tokens_to_ids(ADDED_MASK_TOKEN)]

"""Tiny models built in code: a byte-level tokenizer and small random Llama / Qwen2 configs.

They need no download, so tests, CI and smoke runs work offline (``--target tiny:llama``). Their weights are
random (seeded), so their text is gibberish; what they exercise is the machinery — and every method must
reproduce the target's own output exactly, whatever the weights.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

BOS, EOS, MASK = "<|bos|>", "<|eos|>", "<|mask|>"
BYTE_VOCAB = 256

# name -> (architecture, hidden size, layers, heads, kv heads)
TINY_MODELS = {
    "llama": ("llama", 64, 2, 4, 2),
    "llama-large": ("llama", 96, 3, 4, 2),
    "qwen2": ("qwen2", 64, 2, 4, 2),
    "draft": ("llama", 32, 1, 2, 1),
    "pard": ("llama", 32, 1, 2, 1),  # a random parallel draft: has `pard_token`, never trained
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens, no merges) plus bos/eos/mask: ids 256, 257, 258."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for raw bytes
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: _byte_of(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS, MASK])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, mask_token=MASK
    )


def _byte_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's bytes_to_unicode inverted)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    if ord(ch) in printable:
        return ord(ch)
    others = [b for b in range(256) if b not in printable]
    return others[ord(ch) - 256]


def tiny_model(
    name: str = "llama", seed: int = 0, vocab_size: int = BYTE_VOCAB + 3, sharpen: float = 20.0, **overrides
):
    """Build tiny model ``name`` (a key of TINY_MODELS) with seeded random weights, float32, eval mode.

    ``sharpen`` scales the LM head: large values make distributions peaked so greedy argmax is far from ties;
    1.0 keeps them broad (for distribution tests). ``overrides`` go to the config.
    """
    arch, hidden, layers, heads, kv_heads = TINY_MODELS[name]
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=BYTE_VOCAB,
        eos_token_id=BYTE_VOCAB + 1,
        pad_token_id=BYTE_VOCAB + 1,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    config = LlamaConfig(**kwargs) if arch == "llama" else Qwen2Config(**kwargs)
    if name == "pard":
        config.pard_token = vocab_size - 1 if vocab_size < BYTE_VOCAB + 3 else BYTE_VOCAB + 2
        config.spd_type = "pard"
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM)(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.eval()

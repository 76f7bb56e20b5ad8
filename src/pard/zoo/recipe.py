"""The embedded model family: one tokenizer, three targets, an AR draft and its PARD adaptation.

Everything is trained on the Python standard library's source (the ``train`` split of :mod:`pard.corpus`; the
``heldout`` files are never trained on). Sizes are chosen for 2 CPU cores and a 90-minute build: bf16 autocast
(AMX where the CPU has it) for throughput, 256-token sequences, 16 per batch. Storage is bf16 safetensors, under
60 MB for the whole family.
"""

from __future__ import annotations

from dataclasses import dataclass

VOCAB_SIZE = 4096
EOS = "<|endoftext|>"
RESERVED = [f"<|reserved_{i}|>" for i in range(4)]  # like Llama-3's reserved ids: the PARD mask reuses one
SEQ_LEN = 256
BATCH_SIZE = 16
SEED = 0


@dataclass(frozen=True)
class ModelRecipe:
    """A Llama-architecture model trained from scratch (or, for ``pard``, adapted from ``base``)."""

    hidden_size: int
    layers: int
    intermediate_size: int
    heads: int
    kv_heads: int
    steps: int
    learning_rate: float
    base: str | None = None  # adapt this family member instead of training from scratch
    num_draft_tokens: int = 1  # K_train: 1 = ordinary autoregressive training


FAMILY: dict[str, ModelRecipe] = {
    "draft": ModelRecipe(128, 4, 384, 2, 1, steps=2000, learning_rate=2e-3),
    "small": ModelRecipe(192, 6, 512, 3, 1, steps=1600, learning_rate=1.5e-3),
    "medium": ModelRecipe(256, 8, 704, 4, 2, steps=1500, learning_rate=1.2e-3),
    "large": ModelRecipe(384, 9, 1024, 6, 2, steps=1500, learning_rate=1e-3),
    "pard": ModelRecipe(128, 4, 384, 2, 1, steps=600, learning_rate=1e-3, base="draft", num_draft_tokens=8),
}
TARGETS = ("small", "medium", "large")
COD_RETENTION, COD_MIN_RETENTION = 0.7, 0.2

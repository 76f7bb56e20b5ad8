"""pard — PARD speculative decoding: parallel draft models that propose K tokens in one forward pass.

    from pard import load_pair, SpeculativeDecoder
    pair = load_pair("meta-llama/Llama-3.1-8B-Instruct", "amd/PARD-Llama-3.2-1B")
    decoder = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=8,
                                 target_tokenizer=pair.tokenizer, draft_tokenizer=pair.draft_tokenizer)
    out = decoder.generate([pair.tokenizer.encode("def fib(n):")], max_new_tokens=64)
"""

from .decoding import GenerationOutput, GenerationStats, SamplingConfig, SpeculativeDecoder
from .errors import (
    InvalidArgumentError,
    ModelLoadError,
    NotAParallelDraftError,
    PardError,
    PromptTooLongError,
    VocabularyMismatchError,
)
from .models import ModelPair, draft_kind, load_model, load_pair, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "GenerationOutput",
    "GenerationStats",
    "InvalidArgumentError",
    "ModelLoadError",
    "ModelPair",
    "NotAParallelDraftError",
    "PardError",
    "PromptTooLongError",
    "SamplingConfig",
    "SpeculativeDecoder",
    "VocabularyMismatchError",
    "draft_kind",
    "load_model",
    "load_pair",
    "load_tokenizer",
]

"""pard — PARD speculative decoding: parallel draft models that propose K tokens in one forward pass.

    from pard import load_pair, SpeculativeDecoder
    pair = load_pair("meta-llama/Llama-3.1-8B-Instruct", "amd/PARD-Llama-3.2-1B")
    decoder = SpeculativeDecoder(pair.target, pair.draft, method=pair.method, num_draft_tokens=8,
                                 target_tokenizer=pair.tokenizer, draft_tokenizer=pair.draft_tokenizer)
    out = decoder.generate([pair.tokenizer.encode("def fib(n):")], max_new_tokens=64)

The public names are imported on first use (PEP 562), so ``import pard`` and the command line start without
loading torch.
"""

from importlib import import_module

from .errors import (
    InvalidArgumentError,
    ModelLoadError,
    NotAParallelDraftError,
    OutputError,
    PardError,
    PromptTooLongError,
    VocabularyMismatchError,
)
from .specs import register_scheme
from .zoo import zoo_path

register_scheme("zoo", zoo_path)  # the embedded family's catalogue: zoo:NAME everywhere a model is named

__version__ = "0.1.0"

_LAZY = {
    "GenerationOutput": "pard.decoding",
    "GenerationStats": "pard.decoding",
    "SamplingConfig": "pard.decoding",
    "SpeculativeDecoder": "pard.decoding",
    "ModelPair": "pard.models",
    "draft_method": "pard.models",
    "load_model": "pard.models",
    "load_pair": "pard.models",
    "load_tokenizer": "pard.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pard' has no attribute {name!r}")


__all__ = [
    "GenerationOutput",
    "GenerationStats",
    "InvalidArgumentError",
    "ModelLoadError",
    "ModelPair",
    "NotAParallelDraftError",
    "OutputError",
    "PardError",
    "PromptTooLongError",
    "SamplingConfig",
    "SpeculativeDecoder",
    "VocabularyMismatchError",
    "draft_method",
    "load_model",
    "load_pair",
    "load_tokenizer",
]

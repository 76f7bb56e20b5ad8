"""Speculative decoding: the engine, the proposers, the acceptance rule and the ragged KV cache."""

from .engine import METHODS, GenerationOutput, SpeculativeDecoder
from .sampling import SamplingConfig
from .stats import GenerationStats

__all__ = ["METHODS", "GenerationOutput", "GenerationStats", "SamplingConfig", "SpeculativeDecoder"]

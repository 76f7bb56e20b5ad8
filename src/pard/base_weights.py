"""Drafts that borrow tensors from their base model instead of storing them twice.

A draft sliced from a target with its embeddings frozen (see :mod:`pard.slicing`) holds tensors bit-identical to
the target's: for SmolLM2 the 49,152 x 576 embedding is 28M of a 4-layer slice's 42M parameters. Such a draft is
saved without them; its config names the base (a spec like ``zoo:smollm2``, a path or a hub id) and the tensors
taken from it, and :func:`pard.models.load_model` fills them in at load time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from .errors import ModelLoadError
from .files import atomic_write_bytes, atomic_write_text

BASE_KEY = "pard_base_model"  # config: the base spec
SHARED_KEY = "pard_base_tensors"  # config: names of the tensors taken from it
WEIGHTS = "model.safetensors"


def base_reference(spec: str) -> str | None:
    """How a draft names its base so that it loads from any working directory: a local model by its absolute path,
    a ``zoo:`` or hub name as given; None for a model built in code (``tiny:``), which no later run can read tensors
    from: such a draft stores every tensor itself."""
    if spec.startswith("tiny:"):
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _locate(spec: str) -> dict[str, Path]:
    """Tensor name -> safetensors file, for the model ``spec`` names (single file or sharded with an index)."""
    from .specs import resolve_spec

    folder = Path(resolve_spec(spec))
    if not folder.exists() and not spec.startswith((".", "/", "~")):  # a hub id: its files in the hub's cache
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(spec, allow_patterns=["*.safetensors", "*.safetensors.index.json",
                                                                  "config.json"]))
        except Exception as err:  # the hub client's errors: offline, unknown repo, no access
            raise ModelLoadError(f"base model {spec}: cannot read its weights ({str(err).strip().splitlines()[0]})") \
                from None
    index = folder / f"{WEIGHTS}.index.json"
    if index.exists():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    if not (folder / WEIGHTS).exists():
        raise ModelLoadError(f"base model {spec}: no {WEIGHTS} in {folder}")
    with safe_open(str(folder / WEIGHTS), "pt") as f:
        return dict.fromkeys(f.keys(), folder / WEIGHTS)


def check_base(spec: str) -> None:
    """Raise :class:`ModelLoadError` now, before hours of training, if a draft could not read tensors of ``spec``."""
    _locate(spec)


def base_tensors(spec: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Tensors ``names`` of the model ``spec`` names."""
    files = _locate(spec)
    out = {}
    for name in names:
        if name not in files:
            raise ModelLoadError(f"the draft takes {name} from its base {spec}, which has no such tensor")
        with safe_open(str(files[name]), "pt") as f:
            out[name] = f.get_tensor(name)
    return out


def drop_base_tensors(folder: str | Path, base: str, dtype: torch.dtype | None = None) -> list[str]:
    """Rewrite ``folder``'s weights without the tensors equal to the base's (same name, same shape, same values),
    the rest optionally cast to ``dtype``; record the base and the shared names in config.json. Returns those."""
    folder = Path(folder)
    state = load_file(str(folder / WEIGHTS))
    available = _locate(base)
    shared = []
    for name, tensor in state.items():
        if name in available:
            reference = base_tensors(base, [name])[name]
            if reference.shape == tensor.shape and torch.equal(reference.to(tensor.dtype), tensor):
                shared.append(name)
    kept = {n: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
            for n, t in state.items() if n not in shared}
    atomic_write_bytes(folder / WEIGHTS, save(kept, metadata={"format": "pt"}))
    config = json.loads((folder / "config.json").read_text())
    config[BASE_KEY], config[SHARED_KEY] = base, shared
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return shared

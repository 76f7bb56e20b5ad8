"""A draft from a slice of a bigger model: chosen decoder layers + the embeddings + the final norm.

The answer to "my family has no small model": the slice shares the target's tokenizer, embeddings and
representation space, so it starts far closer to the target than a fresh model of its size, and whatever is kept
frozen (the embeddings, most of a small-hidden model's parameters) need not be stored twice (see
:mod:`pard.base_weights`). Works for the decoder-only families transformers lays out as ``model.layers``
(Llama, Qwen2/3, Mistral, SmolLM, ...).
"""

from __future__ import annotations

from torch import nn

from .errors import InvalidArgumentError


def decoder_layers(model) -> nn.ModuleList:
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise InvalidArgumentError(f"cannot slice a {type(model).__name__}: it has no model.layers list")
    return layers


def parse_layers(text: str) -> list[int]:
    """``"0-3,29"`` -> [0, 1, 2, 3, 29]."""
    layers = []
    for part in text.split(","):
        part = part.strip()
        first, sep, last = part.partition("-")
        if not first.isdigit() or sep and not last.isdigit():  # also catches negative numbers: 0--1, -1
            raise InvalidArgumentError(f"bad layer list {text!r}: layers are numbers from 0; write e.g. 0-3,29")
        if sep and int(last) < int(first):
            raise InvalidArgumentError(f"bad range {part!r} in --slice-layers: a range runs from low to high, "
                                       "e.g. 2-5")
        layers.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    return layers


def slice_layers(model, keep: list[int]):
    """Keep decoder layers ``keep`` (in that order) of ``model``, in place; embeddings, final norm and head stay."""
    layers = decoder_layers(model)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < len(layers) for i in keep):
        raise InvalidArgumentError(f"layers {keep} are not distinct layers of a {len(layers)}-layer model")
    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        for module in layer.modules():  # attention modules index the KV cache by their own layer number
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model

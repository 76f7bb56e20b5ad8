"""Drafts that read the target's hidden states (ParallelSpec, PARD-2): what such a draft records, its adapter, and
whether a given target may feed it.

A *feature draft* is a PARD draft plus a small adapter: the input of each of its positions is the token embedding
plus ``scale * W n(f)``, where f is the target's hidden state, at the chosen layers, of the position *before* the
token (the state that predicted it; zero at position 0), n standardises each of its dimensions with the mean and
standard deviation measured on the training features (``"norm": "standard"`` in the record; drafts recorded
without it normalise each layer's state to unit RMS instead), and W projects the concatenated layers to the
draft's width. A mask slot takes the feature of the last real token before
it (its chain's anchor), because the target has not seen the tokens the masks stand for. The draft is trained with
features dropped from a share of its samples, so the same weights also run target-independently (no features: the
adapter adds nothing), which is the form vLLM's parallel drafting serves and the mode any other target of the
family gets.

Layers are indices into the target's ``hidden_states`` as transformers returns them: 0 = the embeddings, i = after
decoder layer i - 1 (1-based: after the i-th layer), -1 = the last layer's output after the final norm (what the
LM head reads).

Which mode runs is decided once per (target, draft) pair by :func:`feature_binding`: features when the target is
the one the adapter was made for (same model type, width and depth, and the same weights: a fingerprint), the
draft's plain PARD mode otherwise, with one line saying why.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

FEATURES_KEY = "pard_target_features"  # config: the record of the target the adapter reads (a dict)
ADAPTER_NAME = "pard_feature_adapter"  # the adapter's submodule name (its weights: pard_feature_adapter.proj.weight)
# Of W n(f), n(f) about unit size per element in either form: measured on the embedded family with unit RMS
# (README) -- 1.0 swamped the pretrained draft's embeddings once Adam had moved W (its loss stayed above the plain
# draft's); PARD-2's 0.02 on raw states left the adapter's output at a tenth of the embeddings' after 500 steps; 0.1
# keeps it near their size. (Adam moves a zero-initialised W's output by up to ~scale * lr * L H per step: with
# SmolLM2's two layers, lr 1e-2 swamped its embeddings at once.)
DEFAULT_SCALE = 0.1
STANDARD = "standard"  # the record's "norm": per-dimension statistics of the training features (else: unit RMS)


class FeatureAdapter(nn.Module):
    """features (..., L H) -> (..., H_draft): ``scale * W n(f)``. W (H_draft, L H), no bias.

    n, ``standard``: (f - mean) / std per dimension, both measured on the training features (buffers, stored with
    W). Why not each layer's state scaled to unit RMS (the first form, kept for drafts recorded with it): a residual
    stream carries a few *massive* dimensions -- SmolLM2's layer -12 holds 55% of its energy in 5 of 576, one with
    mean 169 and std 1,353 -- so after unit RMS the position-to-position information sits in the small rest, and a
    mostly constant vector dominates what W sees.
    Zero features add nothing (the standardised zero is not used: :meth:`forward` keeps rows without a feature at
    zero), so a target-independent pass is exactly the plain draft."""

    def __init__(self, feature_size: int, hidden_size: int, scale: float = DEFAULT_SCALE, layers: int = 1,
                 norm: str | None = None):
        super().__init__()
        self.proj = nn.Linear(feature_size, hidden_size, bias=False)
        self.scale = float(scale)
        self.layers = layers
        self.norm = norm
        if norm == STANDARD:  # set by :meth:`measure` before training; loaded with the weights after
            self.register_buffer("mean", torch.zeros(feature_size))
            self.register_buffer("inv_std", torch.ones(feature_size))

    @torch.no_grad()
    def measure(self, sample: torch.Tensor) -> None:
        """Set the standardisation from a sample of training features (N, L H)."""
        mean, inv_std = standardisation(sample)
        self.mean.copy_(mean)
        self.inv_std.copy_(inv_std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.to(self.proj.weight.dtype)
        if self.norm == STANDARD:
            present = f.abs().sum(-1, keepdim=True) > 0  # (..., 1): rows without a feature (zeros) stay zero
            f = (f - self.mean) * self.inv_std * present
        else:
            f = unit_rms(f, self.layers).flatten(-2)
        return self.proj(f) * self.scale


def standardisation(sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F) features -> per-dimension mean (F,) and 1 / std (F,), rows without a feature (zeros) left out."""
    sample = sample[sample.abs().sum(-1) > 0].double()
    return sample.mean(0).float(), torch.rsqrt(sample.var(0) + 1e-6).float()


def unit_rms(features: torch.Tensor, layers: int) -> torch.Tensor:
    """n(f): (..., L H) -> (..., L, H), each layer's state scaled to unit RMS (zero stays zero)."""
    f = features.unflatten(-1, (layers, -1))
    return f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)


def adapter_of(model) -> FeatureAdapter | None:
    return getattr(model, ADAPTER_NAME, None)


def feature_record(config) -> dict | None:
    record = getattr(config, FEATURES_KEY, None)
    return record if isinstance(record, dict) else None


def feature_size(record: dict) -> int:
    return int(record["hidden_size"]) * len(record["layers"])


def attach_adapter(model, record: dict, *, init_std: float | None = None) -> FeatureAdapter:
    """Give ``model`` (a draft) an adapter for the target ``record`` describes, and record it in the config.
    ``init_std``: a fresh adapter's weights ~ N(0, init_std) (None: zeros, to be loaded)."""
    adapter = FeatureAdapter(feature_size(record), model.config.hidden_size, record.get("scale", DEFAULT_SCALE),
                             len(record["layers"]), record.get("norm"))
    with torch.no_grad():
        if init_std is None:
            adapter.proj.weight.zero_()
        else:
            adapter.proj.weight.normal_(0.0, init_std)
    param = next(model.parameters())
    model.add_module(ADAPTER_NAME, adapter.to(device=param.device, dtype=param.dtype))
    setattr(model.config, FEATURES_KEY, dict(record))
    return adapter


def detach_adapter(model) -> None:
    """The target-independent form of a feature draft: no adapter, no record (what export writes)."""
    if adapter_of(model) is not None:
        delattr(model, ADAPTER_NAME)
    if hasattr(model.config, FEATURES_KEY):
        delattr(model.config, FEATURES_KEY)


def check_layers(layers: list[int], num_hidden_layers: int) -> list[int]:
    """Layer indices into a target's ``hidden_states`` (L + 1 entries), as given (negative ones count from the end)."""
    from .errors import InvalidArgumentError

    bad = [i for i in layers if not -(num_hidden_layers + 1) <= i <= num_hidden_layers]
    if not layers or bad or len(set(layers)) != len(layers):
        raise InvalidArgumentError(f"feature layers {layers} are not distinct layers of a {num_hidden_layers}-layer "
                                   f"target (indices into its hidden states: -{num_hidden_layers + 1} .. "
                                   f"{num_hidden_layers})")
    return list(layers)


def parse_layers(text: str) -> list[int]:
    """``"-1,-4"`` -> [-1, -4] (what --store-features / --feature-layers take)."""
    from .errors import InvalidArgumentError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgumentError(f"bad layer list {text!r}; write e.g. -1,-4 (indices into the target's hidden "
                                   "states: 0 = embeddings, -1 = the last layer)") from None


def target_fingerprint(model) -> str:
    """A short digest of a target's weights that does not depend on the dtype it was loaded in (bf16 and fp32 loads
    of one checkpoint agree): its final norm, the first rows of its embedding and of its last layer's output
    projection, rounded to bf16. Another model of the same shape differs; loading it again does not."""
    inner = model.model
    parts = [inner.norm.weight, inner.embed_tokens.weight[:8], inner.layers[-1].self_attn.o_proj.weight[:8]]
    digest = hashlib.sha256()
    for tensor in parts:
        digest.update(tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def target_record(target, layers: list[int], spec: str | None = None) -> dict:
    """What a feature draft records about the target it reads (the draft adds its adapter's ``scale``)."""
    config = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    return {"target": spec, "model_type": config.model_type, "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "layers": check_layers(list(layers), config.num_hidden_layers),
            "fingerprint": target_fingerprint(target)}


def features_read(record: dict) -> tuple:
    """What makes two records' features the same: the layers of one target (its width and weights' fingerprint)."""
    return tuple(record["layers"]), record["hidden_size"], record["fingerprint"]


@dataclass(frozen=True)
class FeatureBinding:
    """Whether a (target, draft) pair decodes with target features: ``layers`` to read (None: the plain PARD mode)
    and ``reason``, one line for the user when the draft has an adapter but does not get features."""

    layers: tuple[int, ...] | None
    reason: str | None = None


def feature_binding(target, draft, *, method: str, enabled: bool = True) -> FeatureBinding:
    """Decide the mode once per pair: features only for ``pard`` with a draft whose adapter was made for this very
    target (model type, width, depth, weights' fingerprint), unless ``enabled`` is False (--no-target-features)."""
    record = feature_record(draft.config) if draft is not None else None
    if record is None or adapter_of(draft) is None:
        return FeatureBinding(None)
    plain = "runs as a plain PARD draft (target-independent)"
    if not enabled:
        return FeatureBinding(None, f"the draft's feature adapter is off (--no-target-features): it {plain}")
    if method != "pard":
        return FeatureBinding(None, f"--method {method} drafts one token at a time without the target's features: "
                                    "the adapter is not used")
    config = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
    made_for = record.get("target") or record["model_type"]
    shape = (config.model_type, config.hidden_size, config.num_hidden_layers)
    wanted = (record["model_type"], record["hidden_size"], record["num_hidden_layers"])
    if shape != wanted:
        return FeatureBinding(None, f"the draft reads the hidden states of {made_for} ({wanted[0]}, width {wanted[1]}, "
                                    f"{wanted[2]} layers); this target is {shape[0]}, width {shape[1]}, {shape[2]} "
                                    f"layers: it {plain}")
    if target_fingerprint(target) != record["fingerprint"]:
        return FeatureBinding(None, f"the draft's feature adapter was made for {made_for}, and this target has other "
                                    f"weights (another model of the same shape): it {plain}")
    return FeatureBinding(tuple(record["layers"]))


def select_layers(hidden_states, layers: tuple[int, ...]) -> torch.Tensor:
    """transformers' ``hidden_states`` tuple ((B, T, H) each) -> the chosen layers concatenated (B, T, L H)."""
    return torch.cat([hidden_states[i] for i in layers], dim=-1)

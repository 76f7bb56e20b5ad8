"""Batching packed COD samples into model inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cod import IGNORE_INDEX, PackedSample, attention_mask_from_structure


@dataclass
class CODCollator:
    """Right-pads :class:`PackedSample` s to the longest and builds the attention mask the model needs.

    Returns ``input_ids``, ``labels``, ``position_ids`` (B, L) and ``attention_mask`` (B, 1, L, L): boolean
    (True = attend) for ``sdpa``/``flex_attention``, additive float (0 / dtype min) for ``eager``. Hugging Face
    models take a 4-D mask as is, so the packed layout needs no model changes. Labels are *not* shifted: the loss
    compares logits[:, t] with labels[:, t]. Batches without mask tokens (K = 1) get no mask: causal is exact.
    Samples that carry stored target distributions add ``teacher_ids`` and ``teacher_logprobs`` (B, L, n);
    samples of a feature draft add ``target_features`` (B, L, F), read from the ``feature_store``, or, without one,
    ``feature_positions`` (B, L): where to read them in a target pass over ``teacher_input_ids``.
    """

    pad_token_id: int = 0
    attn_implementation: str = "sdpa"
    dtype: torch.dtype = torch.float32
    pad_to_multiple_of: int | None = None
    with_source: bool = False  # also return the real sequences as ``teacher_input_ids`` (B, N), for distillation
    feature_store: object | None = None  # FeatureStores: samples' feature rows -> ``target_features`` (B, L, F)

    def __post_init__(self):
        if self.attn_implementation.startswith("flash_attention"):
            raise ValueError(
                "PARD training needs an arbitrary attention mask; flash-attention kernels only do causal masks. "
                "Use attn_implementation='sdpa' (default) or 'eager'."
            )

    def __call__(self, samples: list[PackedSample]) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in samples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def stack(field: str, fill: float) -> torch.Tensor:
            """A per-position field (L, ...) of every sample -> (B, width, ...), right-padded with ``fill``."""
            first = getattr(samples[0], field)
            out = torch.full((len(samples), width, *first.shape[1:]), fill, dtype=torch.from_numpy(first).dtype)
            for i, s in enumerate(samples):
                out[i, : len(s)] = torch.from_numpy(getattr(s, field))
            return out

        batch = {
            "input_ids": stack("input_ids", self.pad_token_id),
            "labels": stack("labels", IGNORE_INDEX),
            "position_ids": stack("position_ids", 0),
        }
        if samples[0].teacher_ids is not None:  # stored target distributions: (B, L, n), padded with no entries
            batch["teacher_ids"] = stack("teacher_ids", -1)
            batch["teacher_logprobs"] = stack("teacher_logprobs", -math.inf)
        if samples[0].loss_weights is not None:
            batch["loss_weights"] = stack("loss_weights", 0.0)
        if samples[0].feature_rows is not None:
            rows = stack("feature_rows", -1)  # (B, L)
            if self.feature_store is not None:  # stored features, read now: (B, L, F)
                batch["target_features"] = self.feature_store.gather(rows.numpy())
            else:  # positions in the target pass over the real sequences that the trainer runs
                batch["feature_positions"] = rows
        if self.with_source:
            source = torch.full((len(samples), max(len(s.source_ids) for s in samples)), self.pad_token_id)
            for i, s in enumerate(samples):
                source[i, : len(s.source_ids)] = torch.from_numpy(s.source_ids)
            batch["teacher_input_ids"] = source
        depths = stack("depths", -1)  # -1 marks padding
        if (depths <= 0).all():
            # K = 1 (plain next-token training): real tokens in order, padding only at the end of rows, so the
            # model's own causal mask is exact and the fast causal kernels apply.
            return batch
        mask = attention_mask_from_structure(stack("anchors", -1), depths)[:, None]  # (B, 1, L, L)
        if self.attn_implementation == "eager":
            mask = torch.zeros(mask.shape, dtype=self.dtype).masked_fill(~mask, torch.finfo(self.dtype).min)
        batch["attention_mask"] = mask
        return batch

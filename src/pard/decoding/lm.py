"""The language-model interface the engine and the proposers talk to, and the ragged-input helpers they share.

A :class:`LanguageModel` is a causal LM *with its KV cache*, decoded row by row with ragged lengths: every forward
appends the same number of slots to all rows, ``rollback`` says how many leading tokens of each row are still
right, finished rows leave with ``keep_rows``, and a row can start over on a new prompt with ``admit`` (continuous
batching: a freed row takes the next waiting prompt while the others keep decoding).
:class:`~pard.decoding.cache.CachedLM` implements it over a ``DynamicCache``; :class:`~pard.decoding.static.StaticLM`,
a static, position-written cache (gpt-fast style, for compiled steps), implements the same methods, and
``tests/test_lm_contract.py`` holds every implementation to the same contract.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

PAD_ID = 0  # filler for right-padded ragged inputs; those slots are rolled back before anyone attends to them


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM + its cache. All tensors live on ``device``."""

    device: torch.device
    compile_seconds: float  # spent compiling its steps so far (0 for paths that compile nothing): not decoding time

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real tokens cached per row (= the position of the row's next token)."""

    hidden_layers: tuple[int, ...]  # the target layers whose hidden states passes can return (may be empty)

    def forward(
        self, input_ids: torch.Tensor, logits_to_keep: int = 0, logits_at: torch.Tensor | None = None,
        features: torch.Tensor | None = None, return_hidden: bool = False,
    ):
        """Append input_ids (B, T) after each row's real tokens; return logits (B, T, V) (only the last
        ``logits_to_keep`` positions when > 0, only positions ``logits_at`` (B, n) of each row when given). The T
        new slots count as real until ``rollback`` says otherwise. A draft that reads target features takes them
        as ``features`` (B, T, F); with ``return_hidden`` a target also returns the hidden states of its
        ``hidden_layers`` at the T positions, (logits, (B, T, F))."""

    def rollback(self, lengths: torch.Tensor) -> None:
        """Keep only the first ``lengths[i]`` real tokens of row i (lengths (B,), never more than cached)."""

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the batch; ``rows`` (B',) are the indices to keep."""

    def feed(self, sequences: torch.Tensor, ends: torch.Tensor, pad_id: int = PAD_ID, need_logits: bool = True,
             features: torch.Tensor | None = None, return_hidden: bool = False):
        """Read ``sequences[i, lengths[i]:ends[i]]`` for every row in one forward; return the logits at each row's
        last token read (B, V), or None when ``need_logits`` is False. ``features`` (B, L, F) are read at the same
        slices; ``return_hidden`` also returns the hidden states (B, T, F) at the positions read (row i's first
        counts_i)."""

    def admit(self, rows: torch.Tensor, sequences: torch.Tensor, ends: torch.Tensor,
              features: torch.Tensor | None = None, return_hidden: bool = False):
        """Rows ``rows`` (R,) start over: forget everything they hold, then read ``sequences[r, :ends[r]]`` (the
        prefill of a new prompt), in a forward over those rows only; the other rows are untouched. With
        ``return_hidden``, return the hidden states at the new prompts' positions (R, T, F)."""


def ragged_features(features: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Gather features[i, starts[i]:ends[i]] into a right-padded (B, T, F) tensor (zeros past each row's count):
    the per-token features that go with :func:`ragged_slices`' tokens."""
    counts = (ends - starts).clamp_min(0)  # (B,)
    width = int(counts.max()) if counts.numel() else 0
    offsets = torch.arange(width, device=features.device)  # (T,)
    index = (starts.to(features.device)[:, None] + offsets).clamp_max(features.shape[1] - 1)  # (B, T)
    out = features.gather(1, index[..., None].expand(-1, -1, features.shape[-1]))  # (B, T, F)
    return out.masked_fill((offsets >= counts.to(features.device)[:, None])[..., None], 0.0)


def ragged_slices(
    sequences: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, pad_id: int = PAD_ID
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather sequences[i, starts[i]:ends[i]] into a right-padded (B, T) tensor; also return counts (B,).

    sequences (B, L) holds each row's tokens from index 0 (right-padded buffer).
    """
    counts = (ends - starts).clamp_min(0)  # (B,)
    width = int(counts.max()) if counts.numel() else 0
    offsets = torch.arange(width, device=sequences.device)  # (T,)
    index = (starts[:, None] + offsets).clamp_max(sequences.shape[1] - 1)  # (B, T)
    ids = sequences.gather(1, index)
    ids = ids.masked_fill(offsets >= counts[:, None], pad_id)
    return ids, counts

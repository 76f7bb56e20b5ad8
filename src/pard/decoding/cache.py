"""A causal LM together with its KV cache, decoded row by row with ragged lengths.

Why this shape: in a speculative step rows of a batch accept different numbers of tokens. Rather than copying
caches around, every forward appends the same number of *slots* to all rows, and a per-row boolean ``slot_mask``
(B, S) says which slots hold real tokens. Rolling a row back is just clearing its trailing slots in the mask
(gpt-fast's "rollback is moving a length", made per row); slots that are empty in every row are cropped off the
cache. Positions are passed explicitly (a row's next position = its number of real tokens), so RoPE sees each
row exactly as if it had been decoded alone, and Hugging Face models run unmodified: the 2-D attention mask over
slots turns the holes off.

This is one implementation of :class:`~pard.decoding.lm.LanguageModel`, the interface the engine and the
proposers use.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel

from ..target_features import adapter_of, select_layers
from .lm import PAD_ID, ragged_features, ragged_slices


class CachedLM:
    """``model`` + a ``DynamicCache`` + the slot mask. All tensors live on the model's device.

    ``hidden_layers``: the layers whose hidden states a pass can return (a target feeding a feature draft, see
    :mod:`pard.target_features`); ``reads_features``: passes add the draft's feature adapter to the embeddings.
    """

    compile_seconds = 0.0  # nothing is compiled on this path

    def __init__(self, model: PreTrainedModel, batch_size: int, hidden_layers: tuple[int, ...] = (),
                 reads_features: bool = False):
        self.model = model
        self.device = model.device
        self.cache = DynamicCache(config=model.config)
        self._cache_argument = cache_argument(model)
        self.slot_mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=self.device)  # (B, S)
        self.hidden_layers = tuple(hidden_layers)
        self.adapter = adapter_of(model) if reads_features else None

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of real tokens cached per row (= the position of the row's next token)."""
        return self.slot_mask.sum(dim=1)

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, logits_to_keep: int = 0, logits_at: torch.Tensor | None = None,
        features: torch.Tensor | None = None, return_hidden: bool = False,
    ):
        """Append input_ids (B, T) after each row's real tokens; return logits (B, T, V) (last ``logits_to_keep``
        positions only when > 0; positions ``logits_at`` (B, n) of each row when given: computed for every
        position, then gathered). The T new slots all count as real until ``rollback`` says otherwise.
        ``features`` (B, T, F): the target's features of these tokens, for a draft that reads them.
        ``return_hidden``: also return the hidden states of ``hidden_layers`` at the T positions, (B, T, F)."""
        batch_size, num_new = input_ids.shape
        positions = self.lengths[:, None] + torch.arange(num_new, device=self.device)  # (B, T)
        self.slot_mask = torch.cat(
            [self.slot_mask, torch.ones(batch_size, num_new, dtype=torch.bool, device=self.device)], dim=1
        )  # (B, S+T)
        inputs = {"input_ids": input_ids.to(self.device)}
        if self.adapter is not None and features is not None:  # token embedding + scale * W n(f)
            embeds = self.model.get_input_embeddings()(inputs.pop("input_ids"))
            inputs["inputs_embeds"] = embeds + self.adapter(features.to(self.device)).to(embeds.dtype)
        out = self.model(
            **inputs,
            attention_mask=self.slot_mask.long(),
            position_ids=positions,
            **{self._cache_argument: self.cache},
            use_cache=True,
            logits_to_keep=logits_to_keep,
            output_hidden_states=return_hidden,
        )
        logits = out.logits
        if logits_at is not None:
            index = logits_at.to(self.device)[..., None].expand(-1, -1, out.logits.shape[-1])  # (B, n, V)
            logits = out.logits.gather(1, index)
        if return_hidden:
            return logits, select_layers(out.hidden_states, self.hidden_layers)  # (B, T, F)
        return logits

    def rollback(self, lengths: torch.Tensor) -> None:
        """Keep only the first ``lengths[i]`` real tokens of row i (lengths (B,), never more than cached)."""
        rank = self.slot_mask.long().cumsum(dim=1)  # (B, S): 1-based rank of each real slot in its row
        self.slot_mask = self.slot_mask & (rank <= lengths.to(self.device)[:, None])
        used = self.slot_mask.any(dim=0).nonzero()
        new_size = int(used[-1]) + 1 if used.numel() else 0
        surplus = self.slot_mask.shape[1] - new_size
        if surplus:
            self.cache.crop(-surplus)  # negative = remove that many slots (transformers 4.x and 5.x alike)
            self.slot_mask = self.slot_mask[:, :new_size]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the batch; ``rows`` (B',) are the indices to keep."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.slot_mask = self.slot_mask[rows]

    @torch.inference_mode()
    def admit(self, rows: torch.Tensor, sequences: torch.Tensor, ends: torch.Tensor,
              features: torch.Tensor | None = None, return_hidden: bool = False):
        """Rows ``rows`` (R,) start over on ``sequences[r, :ends[r]]``: read in a cache of their own (a forward over
        those rows only), then written over the rows' slots, from the front (the cache widens if it must).
        ``features`` (B, L, F): every row's token features (as ``feed``); ``return_hidden``: return the hidden
        states of ``hidden_layers`` at the new rows' positions 0.. (R, T, F)."""
        if _has_sliding_layers(self.cache):
            raise NotImplementedError("a sliding-window cache cannot take a new row")
        rows = rows.to(self.device)
        fresh = CachedLM(self.model, len(rows), self.hidden_layers, self.adapter is not None)
        read = fresh.feed(sequences.to(self.device)[rows], ends.to(self.device)[rows], need_logits=False,
                          features=features[rows.to(features.device)] if features is not None else None,
                          return_hidden=return_hidden)
        width = fresh.slot_mask.shape[1]
        extra = width - self.slot_mask.shape[1]
        self.slot_mask[rows] = False
        if extra > 0:  # room for the longest new prompt: empty slots for every row
            self.slot_mask = torch.cat([self.slot_mask, self.slot_mask.new_zeros(len(self.slot_mask), extra)], dim=1)
        if not width:
            return read[1] if return_hidden else None
        for layer, new in zip(self.cache.layers, fresh.cache.layers):  # (B, H_kv, S, D) and (R, H_kv, width, D)
            if extra > 0:
                layer.keys, layer.values = (torch.cat([t, t.new_zeros(*t.shape[:2], extra, t.shape[3])], dim=2)
                                            for t in (layer.keys, layer.values))
            layer.keys[rows, :, :width] = new.keys
            layer.values[rows, :, :width] = new.values
        self.slot_mask[rows, :width] = fresh.slot_mask
        return read[1] if return_hidden else None

    def feed(self, sequences: torch.Tensor, ends: torch.Tensor, pad_id: int = PAD_ID, need_logits: bool = True,
             features: torch.Tensor | None = None, return_hidden: bool = False):
        """Catch up on committed tokens: read ``sequences[i, lengths[i]:ends[i]]`` for every row in one forward.

        Rows are right-padded to the longest gap and the padding is rolled back at once. Returns the logits at
        each row's last token read (B, V), or None when ``need_logits`` is False (prefill skips the LM head).
        ``features`` (B, L, F): each row's token features, read at the same slices (a draft that reads them).
        ``return_hidden``: return (logits or None, hidden states of ``hidden_layers`` (B, T, F), row i's
        [0, counts_i) at positions lengths_i ..).
        """
        sequences, ends = sequences.to(self.device), ends.to(self.device)
        start = self.lengths
        ids, counts = ragged_slices(sequences, start, ends, pad_id)  # (B, T), (B,)
        if ids.shape[1] == 0:
            return (None, None) if return_hidden else None
        pending = ragged_features(features, start, ends) if features is not None else None  # (B, T, F)
        out = self.forward(ids, logits_to_keep=0 if need_logits else 1, features=pending,
                           return_hidden=return_hidden)
        logits, hidden = out if return_hidden else (out, None)
        self.rollback(start + counts)
        if need_logits:
            last = (counts - 1).clamp_min(0)  # (B,)
            logits = logits[torch.arange(len(last), device=self.device), last]  # (B, V)
        else:
            logits = None
        return (logits, hidden) if return_hidden else logits


def cache_argument(model: PreTrainedModel) -> str:
    """The name ``model.forward`` takes its cache by: ``cache`` since transformers renamed ``past_key_values``
    (deprecated in 5.x, removed in 5.40); older releases and remote code may only know the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def admits_rows(model: PreTrainedModel) -> bool:
    """Whether a :class:`CachedLM` of ``model`` can ``admit`` new rows: not with sliding-window layers, which keep
    only their last tokens (the static cache never runs those models)."""
    return not _has_sliding_layers(DynamicCache(config=model.config))


def _has_sliding_layers(cache: DynamicCache) -> bool:
    return any(getattr(layer, "is_sliding", False) for layer in cache.layers)

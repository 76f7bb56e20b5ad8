"""The target's features of the rows being decoded: what a feature draft reads and ``return_features`` keeps.

For every committed token t of a row the buffer holds its feature, the target's hidden states at the chosen
layers at the position before it (h_{t-1}; zero at t = 0): (B, L, F) beside the engine's (B, L) tokens, and
shrunk and refilled with them. Target passes write it -- the prefill for the prompt, each verification pass for the
positions it read (:func:`~pard.decoding.step.speculative_step`), admission for a new row's prompt -- so it always
holds the state the target computed for each committed token's prefix. The draft's layers come first, so its
columns are a prefix of the buffer (no copy).
"""

from __future__ import annotations

import torch


class RowFeatures:
    """The feature buffer of one ``generate`` call.

    Args:
        layers: the target layers its passes return (the draft's first, then the stored ones').
        draft_layers, store_layers: which of them the draft reads, and which ``return_features`` keeps.
        hidden_size, batch_size, capacity: the buffer is (batch_size, capacity, hidden_size x len(layers)).
    """

    def __init__(self, layers: tuple[int, ...], draft_layers: tuple[int, ...], store_layers: tuple[int, ...],
                 hidden_size: int, batch_size: int, capacity: int, dtype: torch.dtype, device: torch.device):
        self.buffer = torch.zeros(batch_size, capacity, hidden_size * len(layers), dtype=dtype, device=device)
        self.draft_width = hidden_size * len(draft_layers)
        self.store_columns = torch.cat([torch.arange(layers.index(layer) * hidden_size,
                                                     (layers.index(layer) + 1) * hidden_size)
                                        for layer in store_layers]).to(device) if store_layers else None

    def draft_view(self) -> torch.Tensor | None:
        """(B, L, F_draft): the columns the draft reads, or None for a target-independent draft."""
        return self.buffer[..., : self.draft_width] if self.draft_width else None

    def clear(self, row: int) -> None:
        """Row ``row`` takes a new prompt."""
        self.buffer[row] = 0

    def write_prompts(self, rows: torch.Tensor, hidden: torch.Tensor | None) -> None:
        """A prefill's hidden states (R, T, F) at positions 0 .. T-1 of ``rows`` are the features of their tokens
        1 .. T (positions past a row's prompt hold padding's states: beyond its committed tokens, overwritten by the
        first step before anyone reads them)."""
        if hidden is not None and hidden.shape[1]:
            self.buffer[rows, 1 : 1 + hidden.shape[1]] = hidden.to(self.buffer.dtype)

    def stored(self, row: int, tokens: int) -> torch.Tensor:
        """The kept layers of a finished row of ``tokens`` tokens (prompt + output): (tokens - 1, F_store) on the
        host, row t = the state at position t."""
        return self.buffer[row, 1:tokens].index_select(-1, self.store_columns).cpu()

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.buffer = self.buffer[rows]

"""Training cost on paper: COD token counts (Eq. 9-11) and Appendix A's Pflops per 1M training tokens."""

from __future__ import annotations

from dataclasses import dataclass

from .cod import CODConfig


def cod_token_factor(cod: CODConfig) -> float:
    """Packed tokens per sequence token for N >> K: sum_k max(r^(k-1), r_min) (Eq. 11 summed; Eq. 10 when
    r_min = 0). Without COD (r = 1) it is K."""
    return sum(cod.retention_of(k) for k in range(1, cod.num_draft_tokens + 1))


@dataclass(frozen=True)
class FlopsInputs:
    """Model sizes in parameters (Appendix A uses Llama-3.3-70B with a 1B PARD draft)."""

    target_params: float = 70e9
    draft_params: float = 1e9  # the PARD draft
    eagle_layer_params: float = 0.86e9  # one decoder layer of the EAGLE head
    lm_head_params: float = 1.01e9  # the (target's) LM head the EAGLE head uses
    eagle3_token_factor: float = 7.0  # EAGLE-3 (HASS-style) trains on 7x the input tokens
    tokens: float = 1e6


def training_pflops(inputs: FlopsInputs, cod: CODConfig) -> dict[str, dict[str, float]]:
    """Forward / backward / total Pflops per ``inputs.tokens`` training tokens for PARD, EAGLE and EAGLE-3.

    Forward ~ 2 x parameters x tokens; a backward pass with weight gradients costs twice its forward, the frozen
    target none, and EAGLE's LM head one forward (activation gradients only).
    """
    scale = inputs.tokens / 1e15
    pard_f = 2 * inputs.draft_params * cod_token_factor(cod) * scale
    eagle_f = 2 * (inputs.target_params + inputs.eagle_layer_params + inputs.lm_head_params) * scale
    eagle_b = 2 * (2 * inputs.eagle_layer_params + inputs.lm_head_params) * scale
    n = inputs.eagle3_token_factor
    eagle3_f = 2 * (inputs.target_params + n * (inputs.eagle_layer_params + inputs.lm_head_params)) * scale
    eagle3_b = 2 * n * (2 * inputs.eagle_layer_params + inputs.lm_head_params) * scale
    table = {
        "PARD": (pard_f, 2 * pard_f),
        "EAGLE": (eagle_f, eagle_b),
        "EAGLE-3": (eagle3_f, eagle3_b),
    }
    return {name: {"forward": f, "backward": b, "total": f + b} for name, (f, b) in table.items()}

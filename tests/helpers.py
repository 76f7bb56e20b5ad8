"""Shared test helpers: the reference decoder and draft constructions (fixtures live in conftest.py)."""

from __future__ import annotations

import copy

import torch

PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3], [100, 20, 30, 40, 50, 60, 70, 80, 90]]


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The target's own greedy output, from transformers' generate (the reference every method must match)."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def as_pard_draft(model, mask_token_id: int):
    """A copy of ``model`` that declares ``mask_token_id`` as its pard_token (official checkpoint layout)."""
    draft = copy.deepcopy(model)
    draft.config.pard_token = mask_token_id
    draft.config.spd_type = "pard"
    return draft


def noisy_copy(model, scale: float, seed: int):
    """A copy of ``model`` with Gaussian noise on every weight: agrees with it often, not always (ragged accepts)."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return draft

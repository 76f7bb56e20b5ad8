"""The acceptance rule as pure tensor functions (no models, no caches).

Shapes: B rows, K draft tokens d_1..d_K, V vocabulary entries. The target scored [x_last, d_1..d_K] in one pass,
so ``p[:, j]`` is the target's distribution for the token after d_j (``p[:, 0]`` follows x_last): K+1 rows.

Both functions return ``(accepted, next_token)``:
  * accepted (B,): a_i, the number of leading draft tokens accepted (0..K);
  * next_token (B,): the token the target contributes after them — the correction at the first rejected
    position, or the bonus token from ``p[:, K]`` when all K were accepted. Each step therefore commits a_i + 1
    tokens, and τ = E[a_i + 1].
"""

from __future__ import annotations

import torch

from .sampling import sample


def greedy_accept(draft_ids: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: the longest prefix where the draft equals the target's argmax, plus one target token.

    draft_ids (B, K) int; target_logits (B, K+1, V).
    """
    target_ids = target_logits.argmax(dim=-1)  # (B, K+1)
    num_draft_tokens = draft_ids.shape[1]
    matches = draft_ids == target_ids[:, :num_draft_tokens]  # (B, K)
    accepted = matches.long().cumprod(dim=1).sum(dim=1)  # (B,)
    next_token = target_ids.gather(1, accepted[:, None]).squeeze(1)  # (B,)
    return accepted, next_token


def rejection_sample(
    draft_ids: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative rejection sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023).

    draft_ids (B, K) with d_j ~ q_j; q (B, K, V) draft probabilities; p (B, K+1, V) target probabilities.
    Accept d_j with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection j resample from
    norm(max(p_j - q_j, 0)); if all K are accepted draw the bonus token from p_{K+1}. The committed tokens are then
    distributed exactly as if sampled from p one by one.
    """
    num_draft_tokens = draft_ids.shape[1]
    idx = draft_ids[..., None]  # (B, K, 1)
    p_x = p[:, :num_draft_tokens].gather(2, idx).squeeze(2)  # (B, K)
    q_x = q.gather(2, idx).squeeze(2)  # (B, K)
    u = torch.rand(p_x.shape, device=p.device, generator=generator)  # (B, K)
    # u < p/q written as u*q < p: no division, and q_x == 0 (impossible draw) can never be accepted by accident.
    accept = u * q_x < p_x  # (B, K)
    accepted = accept.long().cumprod(dim=1).sum(dim=1)  # (B,)

    # Distribution of the token after the accepted prefix: residual at a rejection, p itself for the bonus.
    residual = (p[:, :num_draft_tokens] - q).clamp_min(0.0)  # (B, K, V)
    candidates = torch.cat([residual, p[:, num_draft_tokens:]], dim=1)  # (B, K+1, V)
    rows = torch.arange(draft_ids.shape[0], device=p.device)
    dist = candidates[rows, accepted]  # (B, V)
    mass = dist.sum(dim=-1, keepdim=True)  # (B, 1)
    # A rejection with an all-zero residual means p == q up to rounding; p is then the exact answer.
    fallback = p[rows, accepted]  # (B, V)
    dist = torch.where(mass > 1e-12, dist / mass.clamp_min(1e-12), fallback)
    next_token = sample(dist, generator)
    return accepted, next_token

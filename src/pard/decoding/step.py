"""One speculative step: propose -> verify -> accept -> commit (paper Algorithm 1, lines 3-13, for a batch).

Every method is this step: AR is the step with no draft tokens (k = 0, one target pass, one token committed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .adaptive import VerifyLengthChooser
from .lm import LanguageModel
from .proposers import Proposer
from .sampling import SamplingConfig, logits_to_probs
from .verify import greedy_accept, rejection_sample


@dataclass
class StepResult:
    """What one step committed.

    k: draft tokens verified (the same for every row); accepted (B,): a, draft tokens each row accepted;
    new_tokens (B, k+1): the step's tokens per row (the first a + 1 are committed: accepted drafts, then the
    target's correction or bonus token); lengths (B,): committed tokens per row afterwards; confidence (B, k_max)
    the draft's q(d_i) when `-k auto` asked for it; draft_seconds / verify_seconds: wall-clock of both phases;
    top_logprobs: when asked for n of them, the target's n most likely tokens at each of the k + 1 positions, as
    (log-probabilities (B, k+1, n), ids (B, k+1, n)), of the distribution each new token was drawn from or checked
    against (temperature 1, before any sampling filter).
    """

    k: int
    accepted: torch.Tensor
    new_tokens: torch.Tensor
    lengths: torch.Tensor
    confidence: torch.Tensor | None
    draft_seconds: float
    verify_seconds: float
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None


def speculative_step(
    target: LanguageModel,
    proposer: Proposer | None,
    chooser: VerifyLengthChooser | None,
    sequences: torch.Tensor,
    lengths: torch.Tensor,
    k: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    top_logprobs: int = 0,
    features: torch.Tensor | None = None,
    draft_features: torch.Tensor | None = None,
) -> StepResult:
    """Draft up to k tokens per row, verify them in one target pass, commit the accepted prefix + one token.

    sequences (B, L) holds row i's committed tokens at [0, lengths[i]) and receives the step's tokens in place.
    Invariant kept: the target's cache holds every committed token but each row's last one, which opens the
    verification pass [x_last, d_1..d_k] -> k + 1 target distributions (the proposer's cache holds at most that).
    ``top_logprobs`` = n > 0 also returns the n most likely tokens of each of those distributions (read only:
    what is committed does not change).

    Target features: ``features`` (B, L, F) holds, at index t, the feature of token t (the target's hidden states
    h_{t-1}); the verification pass computes h at positions n-1 .. n+k-1, i.e. the features of tokens n .. n+k,
    written in place (the first a + 1 belong to committed tokens; the rest are overwritten before anyone reads
    them). ``draft_features`` is what the proposer reads (the same buffer, or the columns of its layers). Only the
    proposals depend on them: what is committed is decided by the target alone.
    """
    device = sequences.device
    tick = time.perf_counter()
    proposal = offered = None
    if proposer is not None and k > 0 and (chooser is None or chooser.drafting()):
        extra = {"keep_drafting": chooser.keep_drafting} if chooser is not None and chooser.per_token_draft else {}
        offered = proposer.propose(sequences, lengths, k, sampling, generator, features=draft_features, **extra)
        synchronize(device)
        k = chooser.choose(offered.confidence) if chooser is not None else offered.draft_ids.shape[1]
        proposal = offered.first(k) if k > 0 else None
    else:
        k = 0
    draft_ids = proposal.draft_ids.to(device) if proposal is not None else sequences.new_empty(len(lengths), 0)
    tock = time.perf_counter()

    last = sequences.gather(1, (lengths - 1)[:, None])  # (B, 1)
    out = target.forward(torch.cat([last, draft_ids], dim=1), return_hidden=features is not None)
    logits, hidden = out if features is not None else (out, None)  # (B, k+1, V), (B, k+1, F)
    if sampling.greedy:
        accepted, next_token = greedy_accept(draft_ids, logits)  # Eq. 1 with the argmax as target
    else:
        p = logits_to_probs(logits, sampling)  # (B, k+1, V)
        q = proposal.draft_probs.to(device) if proposal is not None else p[:, :0]
        accepted, next_token = rejection_sample(draft_ids, q, p, generator)  # Eq. 2
    # Commit: the target keeps x_last + the accepted drafts; the proposer keeps what it read correctly.
    target.rollback(lengths + accepted)
    new_tokens = torch.cat([draft_ids, draft_ids.new_zeros(len(lengths), 1)], dim=1)  # (B, k+1)
    new_tokens.scatter_(1, accepted[:, None], next_token[:, None])
    write_at = lengths[:, None] + torch.arange(k + 1, device=device)  # (B, k+1)
    sequences.scatter_(1, write_at, new_tokens)
    if hidden is not None:  # token n + j's feature is h at position n - 1 + j, the j-th position read
        features.scatter_(1, write_at[..., None].expand(-1, -1, features.shape[-1]), hidden.to(features.dtype))
    if offered is not None:  # a step that did not draft left the proposer's cache as it was: nothing to undo
        proposer.rollback(lengths + accepted)
    synchronize(device)
    confidence = offered.confidence if offered is not None else None
    top = None
    if top_logprobs:
        top = tuple(torch.log_softmax(logits.float(), dim=-1).topk(top_logprobs, dim=-1))  # 2 x (B, k+1, n)
    return StepResult(k, accepted, new_tokens, lengths + accepted + 1, confidence, tock - tick,
                      time.perf_counter() - tock, top)


def synchronize(device: torch.device) -> None:
    """Make wall-clock timings honest on asynchronous devices (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

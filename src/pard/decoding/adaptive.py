"""How many draft tokens to verify, step by step: `-k auto`.

A PARD draft proposes K_max tokens in one pass whose cost hardly depends on K_max, and says how sure it is of each
(q_i, its probability of its own token d_i). Verifying the first k costs a target pass of k + 1 tokens, T(k + 1),
which on a CPU grows with k. Each step the engine verifies the prefix that maximises expected committed tokens per
second, summed over the rows of the batch:

    E[tokens | k] = 1 + sum_{i=1..k} prod_{j<=i} alpha_j    alpha_j = P(d_j accepted | d_1..d_{j-1} accepted)
    rate(k)       = sum_rows E[tokens | k] / (T_draft + T(k + 1))          rate(0) = B / T(1)  (no draft pass)

alpha_j is the draft's confidence q_j calibrated online: for each position and confidence bin, the acceptance
rate observed so far, with the raw confidence as a prior worth PRIOR_WEIGHT observations. T(n) is measured on the
passes themselves (an exponential moving average per n; an unmeasured n is assumed as cheap as the largest
measured size below it, so it gets tried once), so a busy machine or a shrinking batch shows up in the next
choice. Verification is untouched: the output is exactly that of any
fixed K (speculative decoding is lossless for every k).

What is learned carries over between generate calls of one decoder (per batch size); the on/off schedule restarts
with each call.

Switching off: when plain decoding wins PATIENCE steps in a row, the engine stops drafting and decodes alone; it
probes again after OFF_STEPS steps, an interval that doubles each time a probe still loses.

For autoregressive drafts (vsd) the same model stops drafting early: after j tokens, one more is drafted only if
the expected rate with it (the position's mean calibrated acceptance standing in for its unknown confidence) beats
stopping at j — the cost-aware counterpart of transformers' fixed confidence threshold.
"""

from __future__ import annotations

import torch

BINS = 10
PRIOR_WEIGHT = 4.0
EMA = 0.3
PATIENCE = 3
OFF_STEPS = 8


class VerifyLengthChooser:
    """Online state of `-k auto` for one generation: calibration, latency profile, on/off schedule."""

    def __init__(self, k_max: int, draft_passes_scale: bool):
        """``draft_passes_scale``: the draft's cost grows with k (vsd: one pass per token) or not (pard)."""
        self.k_max = k_max
        self.per_token_draft = draft_passes_scale
        self.accepted = torch.zeros(k_max, BINS)  # (K, bins) calibration counts
        self.tried = torch.zeros(k_max, BINS)
        self.verify_seconds: dict[int, float] = {}  # n tokens -> T(n), EMA
        self.draft_seconds: float | None = None  # per draft pass (pard: the whole proposal)
        self.losing_streak = 0
        self.off_for = 0  # steps left without drafting
        self.backoff = OFF_STEPS
        self.probing = False

    def new_generation(self) -> None:
        """A new generate call: keep what was learned (calibration, pass costs), restart the on/off schedule."""
        self.losing_streak, self.off_for, self.backoff, self.probing = 0, 0, OFF_STEPS, False

    # ----------------------------------------------------------------------------------------------- decisions
    def drafting(self) -> bool:
        """Should this step draft at all?"""
        if self.off_for > 0:
            self.off_for -= 1
            self.probing = self.off_for == 0
            return False
        return True

    @staticmethod
    def _cells(confidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Confidences (B, k) on the host, with the calibration cell of each: position (B, k) and bin (B, k)."""
        conf = confidence.detach().float().cpu().clamp(0, 1)
        bins = (conf * BINS).long().clamp_max(BINS - 1)
        return conf, torch.arange(conf.shape[1]).expand_as(bins), bins

    def alpha(self, confidence: torch.Tensor) -> torch.Tensor:
        """Calibrated acceptance probabilities (B, k) from the draft's confidences (B, k)."""
        conf, pos, bins = self._cells(confidence)
        acc, tried = self.accepted[pos, bins], self.tried[pos, bins]
        return (acc + PRIOR_WEIGHT * conf) / (tried + PRIOR_WEIGHT)

    def expected_tokens(self, alpha: torch.Tensor) -> torch.Tensor:
        """(k + 1,): sum over rows of E[tokens | verify the first k], k = 0..K."""
        survive = alpha.cumprod(dim=1).sum(dim=0)  # (k,): expected accepted count contributed by position i
        rows = float(alpha.shape[0])
        return torch.cat([torch.tensor([rows]), rows + survive.cumsum(dim=0)])

    def cost(self, k: int) -> float:
        """Seconds of a step that verifies k draft tokens (draft passes + target pass of k + 1 tokens)."""
        draft = 0.0 if k == 0 else (self.draft_seconds or 0.0) * (k if self.per_token_draft else 1)
        return draft + self.target_seconds(k + 1)

    def target_seconds(self, n: int) -> float:
        """T(n): measured, else optimistic — the time of the largest measured size below n (a pass never costs
        less with more tokens). Optimism makes the chooser try an unmeasured k once; that pass then measures it
        (interpolating instead would overrate every size between 1 and K_max + 1 when T is concave, and never
        try them)."""
        if n in self.verify_seconds:
            return self.verify_seconds[n]
        below = [m for m in self.verify_seconds if m < n]
        if below:
            return self.verify_seconds[max(below)]
        return self.verify_seconds[min(self.verify_seconds)] if self.verify_seconds else 1.0

    def choose(self, confidence: torch.Tensor) -> int:
        """The k (0..K) to verify this step, from the proposal's confidences (B, K)."""
        k_offered = confidence.shape[1]
        if self.draft_seconds is None:
            return k_offered  # bootstrapping: time a full verification first...
        if 1 not in self.verify_seconds:
            return 0  # ...then a plain step
        tokens = self.expected_tokens(self.alpha(confidence))  # (K + 1,)
        rates = [float(tokens[k]) / self.cost(k) for k in range(k_offered + 1)]
        rates[0] = float(tokens[0]) / self.target_seconds(1)  # plain decoding needs no draft pass at all
        return max(range(k_offered + 1), key=lambda k: rates[k])

    def keep_drafting(self, confidence: torch.Tensor) -> bool:
        """vsd: after j drafted tokens (confidence (B, j)), is a (j+1)-th worth its draft pass?"""
        j = confidence.shape[1]
        if j >= self.k_max:
            return False
        if self.draft_seconds is None or 1 not in self.verify_seconds:
            return True
        alpha = self.alpha(confidence)  # (B, j)
        tokens = self.expected_tokens(alpha)
        mean_next = self._mean_alpha(j)
        extended = float(tokens[j]) + float(alpha.cumprod(dim=1)[:, -1].sum()) * mean_next
        return extended / self.cost(j + 1) > float(tokens[j]) / self.cost(j)

    def _mean_alpha(self, position: int) -> float:
        """The acceptance rate observed at 0-based ``position`` over all confidences (0.5 before any)."""
        tried = float(self.tried[position].sum())
        return (float(self.accepted[position].sum()) + 0.5 * PRIOR_WEIGHT) / (tried + PRIOR_WEIGHT)

    # -------------------------------------------------------------------------------------------- observations
    def observe(self, k: int, confidence: torch.Tensor | None, accepted: torch.Tensor, draft_seconds: float,
                verify_seconds: float) -> None:
        """Learn from one step: which of the k verified positions were accepted (accepted (B,)), and its timings."""
        n = k + 1
        old = self.verify_seconds.get(n)
        self.verify_seconds[n] = verify_seconds if old is None else (1 - EMA) * old + EMA * verify_seconds
        catching_up = self.probing  # the first draft after a pause also reads every token decoded meanwhile
        if confidence is not None and confidence.shape[1] > 0 and not catching_up:
            per_pass = draft_seconds / (confidence.shape[1] if self.per_token_draft else 1)
            old = self.draft_seconds
            self.draft_seconds = per_pass if old is None else (1 - EMA) * old + EMA * per_pass
        if k > 0 and confidence is not None:
            _, pos, bins = self._cells(confidence[:, :k])
            a = accepted.detach().cpu()[:, None]  # (B, 1)
            reached = pos <= a  # position i was judged iff all before it were accepted
            self.tried.index_put_((pos[reached], bins[reached]), torch.ones(int(reached.sum())), accumulate=True)
            won = pos < a
            self.accepted.index_put_((pos[won], bins[won]), torch.ones(int(won.sum())), accumulate=True)
        self._schedule(k, probed=confidence is not None)

    def _schedule(self, k: int, probed: bool) -> None:
        if not probed:
            return  # a step without drafting (switched off) says nothing about the draft
        was_probe, self.probing = self.probing, False
        if k > 0:
            self.losing_streak, self.backoff = 0, OFF_STEPS
            return
        self.losing_streak += 1
        if was_probe:  # switched back on to probe, and plain decoding still wins: stay off twice as long
            self.backoff *= 2
        elif self.losing_streak < PATIENCE:
            return
        self.off_for, self.losing_streak = self.backoff, 0

"""How many draft tokens to verify, step by step: `-k auto`.

A PARD draft proposes K_max tokens in one pass whose cost hardly depends on K_max, and says how sure it is of each
(q_i, its probability of its own token d_i). Verifying the first k costs a target pass of k + 1 tokens, T(k + 1),
which on a CPU grows with k. Each step the engine verifies the prefix that maximises expected committed tokens per
second, summed over the rows of the batch:

    E[tokens | k] = 1 + sum_{i=1..k} prod_{j<=i} alpha_j    alpha_j = P(d_j accepted | d_1..d_{j-1} accepted)
    rate(k)       = sum_rows E[tokens | k] / (T_draft + T(k + 1))          rate(0) = B / T(1)  (no draft pass)

alpha_j is the draft's confidence q_j calibrated online: for each position and confidence bin, the acceptance
rate observed so far, with the raw confidence as a prior worth PRIOR_WEIGHT observations. T(n) starts as a latency
profile measured before the first step (the median of PROFILE_REPEATS target passes of each width 1..K_max + 1 over
the prompt just read: a single early pass can be several times too slow, and a width judged too costly once would
never be tried again), then follows the passes themselves (an exponential moving average per n), so a busy machine
or a shrinking batch shows up in the next choice. Verification is untouched: the output is exactly that of any
fixed K (speculative decoding is lossless for every k).

What is learned carries over between generate calls of one decoder (per batch size), the on/off schedule included.

Switching off is judged on measured rates, not on the model above: the engine keeps an exponential moving average
of what drafting steps actually commit per row and what they cost (the draft pass included, also when the step then
verified nothing), and compares it with plain decoding, 1 token per row per T(1). Once drafting has run PATIENCE
steps and loses, the engine decodes plainly for OFF_STEPS steps, then probes for PATIENCE steps; each probe that
still loses doubles the pause (up to MAX_OFF_STEPS), a winning one resets it. Probing is exploration with a price:
a losing stretch of drafting cost `excess` seconds more than plain decoding would have taken for the same tokens,
so the pause after it also lasts at least excess / (EXPLORATION_BUDGET * T(1)) steps -- where drafting loses,
`-k auto` then stays within EXPLORATION_BUDGET of plain decoding however costly a probe is (a vsd probe of K_max
draft passes, a catch-up pass over a long pause). While it is off, a new generate call does not even read its
prompt into the draft: the probe's first pass reads everything at once; that catch-up pass is priced as an
ordinary draft pass in the rate estimates (it is the cost of switching, not of drafting) and at its real cost in
the excess.

For autoregressive drafts (vsd) the same model stops drafting early: after j tokens, one more is drafted only if
the expected rate with it (the position's mean calibrated acceptance standing in for its unknown confidence) beats
stopping at j — the cost-aware counterpart of transformers' fixed confidence threshold.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from .lm import PAD_ID, LanguageModel

BINS = 10
PRIOR_WEIGHT = 4.0
EMA = 0.3
PATIENCE = 4  # drafting steps an on-period (or a probe) lasts before drafting is judged against plain decoding
OFF_STEPS = 8
MAX_OFF_STEPS = 64  # a pause outlasting a few prompts would keep drafting off on text where it pays...
EXPLORATION_BUDGET = 0.03  # ...unless the probes themselves would cost more than this share of plain decoding
PROFILE_REPEATS = 3


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
        self.drafting_tokens: float | None = None  # EMA of tokens committed per row by a drafting step
        self.drafting_seconds: float | None = None  # EMA of a drafting step's seconds (draft pass + verification)
        self.on_steps = 0  # drafting steps since drafting was last switched on
        self.off_for = 0  # steps left without drafting
        self.backoff = OFF_STEPS
        self.excess_seconds = 0.0  # what drafting cost beyond plain decoding since it was last judged to win
        self.catching_up = False  # the next draft pass also reads the tokens decoded without it

    def new_generation(self) -> None:
        """A new generate call: everything learned carries over; the draft's cache starts empty, so while drafting
        is off its first pass will read the prompt (see :attr:`switched_off`)."""
        self.catching_up = self.switched_off

    def profile(self, target: LanguageModel, sync=lambda: None) -> None:
        """Measure T(n), n = 1..K_max + 1, on ``target`` as it stands (its cache is left as it was), once."""
        if len(self.verify_seconds) > self.k_max:
            return
        lengths = target.lengths.clone()  # (B,)
        for n in range(1, self.k_max + 2):
            ids = torch.full((len(lengths), n), PAD_ID, dtype=torch.long, device=target.device)  # (B, n)
            seconds = []
            for _ in range(PROFILE_REPEATS + 1):  # + 1: a shape's first pass warms it up (or compiles it)
                started = time.perf_counter()
                target.forward(ids)
                target.rollback(lengths)
                sync()
                seconds.append(time.perf_counter() - started)
            self.verify_seconds[n] = statistics.median(seconds[1:])

    @property
    def switched_off(self) -> bool:
        """Plain decoding for the next step(s): the engine need not even read a new prompt into the draft."""
        return self.off_for > 0

    # ----------------------------------------------------------------------------------------------- decisions
    def drafting(self) -> bool:
        """Should this step draft at all?"""
        if self.off_for > 0:
            self.off_for -= 1
            self.catching_up = True
            return False
        return True

    def drafting_rate(self) -> float | None:
        """Measured tokens per row per second of drafting steps (None before any)."""
        if self.drafting_seconds is None:
            return None
        return self.drafting_tokens / self.drafting_seconds

    def plain_rate(self) -> float | None:
        """Tokens per row per second of plain decoding: 1 / T(1) (None before T(1) was measured)."""
        return 1.0 / self.verify_seconds[1] if 1 in self.verify_seconds else None

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
        self.verify_seconds[k + 1] = _ema(self.verify_seconds.get(k + 1), verify_seconds)
        drafted = confidence is not None
        if not drafted:
            return  # a plain step (switched off) says nothing about the draft
        tokens_per_row = float(accepted.float().mean()) + 1.0
        if self.plain_rate() is not None:  # the real cost, catch-up included, against plain decoding's
            self.excess_seconds += draft_seconds + verify_seconds - tokens_per_row / self.plain_rate()
        # The first pass after a pause also read every token decoded meanwhile: price it as an ordinary pass.
        if self.catching_up and self.draft_seconds is not None:
            draft_seconds = self.draft_seconds * (max(k, 1) if self.per_token_draft else 1)
        elif confidence.shape[1] > 0:
            per_pass = draft_seconds / (confidence.shape[1] if self.per_token_draft else 1)
            self.draft_seconds = _ema(self.draft_seconds, per_pass)
        self.catching_up = False
        if k > 0:
            _, pos, bins = self._cells(confidence[:, :k])
            a = accepted.detach().cpu()[:, None]  # (B, 1)
            reached = pos <= a  # position i was judged iff all before it were accepted
            self.tried.index_put_((pos[reached], bins[reached]), torch.ones(int(reached.sum())), accumulate=True)
            won = pos < a
            self.accepted.index_put_((pos[won], bins[won]), torch.ones(int(won.sum())), accumulate=True)
        self.drafting_tokens = _ema(self.drafting_tokens, tokens_per_row)
        self.drafting_seconds = _ema(self.drafting_seconds, draft_seconds + verify_seconds)
        self._schedule()

    def _schedule(self) -> None:
        """After a drafting step: keep drafting, or pause it when it measurably loses to plain decoding."""
        self.on_steps += 1
        plain = self.plain_rate()
        if plain is None or self.on_steps < PATIENCE:
            return
        if self.drafting_rate() >= plain:
            self.backoff, self.excess_seconds = OFF_STEPS, 0.0
            return
        paid_back = math.ceil(max(self.excess_seconds, 0.0) * plain / EXPLORATION_BUDGET)  # plain steps
        self.off_for, self.on_steps, self.excess_seconds = max(self.backoff, paid_back), 0, 0.0
        self.backoff = min(2 * self.backoff, MAX_OFF_STEPS)


def _ema(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new

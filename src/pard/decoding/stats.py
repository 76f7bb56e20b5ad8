"""What every generation reports: tokens, passes, τ, per-position acceptance (k-α) and where the time went."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerationStats:
    """Counters of one ``generate`` call (all rows together).

    A *row-step* is one row taking part in one verification pass. For each we record a (accepted) and k (draft
    tokens offered that step; k < K only when the token budget is nearly spent, 0 for plain AR steps).
    """

    method: str
    num_draft_tokens: int  # K (K_max with `-k auto`)
    adaptive: bool = False  # `-k auto`: k chosen per step (see drafted_lengths)
    engine: str = "eager"  # the engine path that ran (see pard.decoding.engines)
    matmul: str = "library"  # what multiplied the static paths' small-row passes: "kernel (ISA)" or "library"
    target_features: list[int] | None = None  # the target layers a feature draft read (None: target-independent)
    tokens: int = 0
    speculative_steps: int = 0  # steps that verified at least one draft token (the others decoded plainly)
    target_forwards: int = 0  # verification passes, prefill excluded
    draft_forwards: int = 0
    accepted_lengths: list[list[int]] = field(default_factory=list)  # per row, a of each row-step
    drafted_lengths: list[list[int]] = field(default_factory=list)  # per row, k of each row-step
    prefill_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    total_seconds: float = 0.0  # compilation excluded
    compile_seconds: float = 0.0  # first passes of new shapes through compiled steps (reported apart)

    @property
    def row_steps(self) -> int:
        return sum(len(row) for row in self.accepted_lengths)

    @property
    def mean_accepted_length(self) -> float:
        """τ: tokens committed per target pass and row, bonus token included: mean(a + 1) over row-steps."""
        steps = self.row_steps
        return sum(a + 1 for row in self.accepted_lengths for a in row) / steps if steps else 0.0

    @property
    def acceptance_per_position(self) -> list[float]:
        """k-α for k = 1..K: of the row-steps that offered >= k draft tokens, the fraction that accepted >= k."""
        rates = []
        for k in range(1, self.num_draft_tokens + 1):
            offered = accepted = 0
            for row_a, row_k in zip(self.accepted_lengths, self.drafted_lengths):
                for a, drafted in zip(row_a, row_k):
                    if drafted >= k:
                        offered += 1
                        accepted += a >= k
            if offered == 0:
                break
            rates.append(accepted / offered)
        return rates

    @property
    def other_seconds(self) -> float:
        return max(self.total_seconds - self.prefill_seconds - self.draft_seconds - self.verify_seconds, 0.0)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.total_seconds if self.total_seconds > 0 else 0.0

    def merged(self, others: list[GenerationStats]) -> GenerationStats:
        """The counters of several generate calls (e.g. the batches of one benchmark pass) added up."""
        out = GenerationStats(self.method, self.num_draft_tokens, self.adaptive, self.engine, self.matmul,
                              self.target_features)
        for s in [self, *others]:
            out.tokens += s.tokens
            out.speculative_steps += s.speculative_steps
            out.target_forwards += s.target_forwards
            out.draft_forwards += s.draft_forwards
            out.accepted_lengths += s.accepted_lengths
            out.drafted_lengths += s.drafted_lengths
            out.prefill_seconds += s.prefill_seconds
            out.draft_seconds += s.draft_seconds
            out.verify_seconds += s.verify_seconds
            out.total_seconds += s.total_seconds
            out.compile_seconds += s.compile_seconds
        return out

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "num_draft_tokens": self.num_draft_tokens,
            "adaptive": self.adaptive,
            "engine": self.engine,
            "matmul": self.matmul,
            "target_features": self.target_features,
            "tokens": self.tokens,
            "speculative_steps": self.speculative_steps,
            "target_forwards": self.target_forwards,
            "draft_forwards": self.draft_forwards,
            "mean_accepted_length": self.mean_accepted_length,
            "acceptance_per_position": self.acceptance_per_position,
            "tokens_per_second": self.tokens_per_second,
            "prefill_seconds": self.prefill_seconds,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "other_seconds": self.other_seconds,
            "total_seconds": self.total_seconds,
            "compile_seconds": self.compile_seconds,
        }

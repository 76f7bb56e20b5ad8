"""The decoding loop: prefill -> (propose -> verify -> commit)* with per-row budgets, EOS and stats.

One engine runs all three methods; they differ only in the proposer:
  * ``ar``   no proposer, k = 0: each pass commits the target's own next token (the baseline);
  * ``vsd``  :class:`AutoregressiveDraftProposer`, k draft passes per step (paper Eq. 3);
  * ``pard`` :class:`ParallelDraftProposer`, one draft pass per step (paper Eq. 4).

Invariant between steps: the target's cache holds every committed token of a row except the last one, which is
fed first in the next verification pass: [x_last, d_1..d_k] -> k+1 target distributions in one forward.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..errors import InvalidArgumentError, NotAParallelDraftError, PromptTooLongError
from ..mask_tokens import mask_token_ids_of
from ..models import context_window
from ..vocab import check_compatible, vocab_size
from .adaptive import VerifyLengthChooser
from .cache import CachedLM
from .lm import PAD_ID
from .proposers import AutoregressiveDraftProposer, ParallelDraftProposer, Proposer
from .sampling import SamplingConfig, logits_to_probs
from .stats import GenerationStats
from .verify import greedy_accept, rejection_sample

METHODS = ("ar", "vsd", "pard")


@dataclass
class GenerationOutput:
    """sequences: per row, the generated token ids (prompt excluded, EOS included when hit); stats: counters."""

    sequences: list[list[int]]
    stats: GenerationStats


class SpeculativeDecoder:
    """Generates exactly what ``target`` would, with draft tokens from ``draft`` verified in parallel.

    Args:
        target: the model whose output is reproduced.
        draft: the draft model (required for ``vsd`` and ``pard``).
        method: ``"ar"``, ``"vsd"`` or ``"pard"``.
        num_draft_tokens: K, draft tokens per step (runtime choice, independent of the K used in training), or
            ``"auto"``: draft ``max_draft_tokens`` and verify, each step, the prefix that maximises expected
            committed tokens per second, or none at all (see :mod:`pard.decoding.adaptive`).
        max_draft_tokens: K_max for ``"auto"``.
        mask_token_ids: override the draft's ``pard_token``; a list gives distinct ids per mask position.
        target_tokenizer / draft_tokenizer: when both are given their vocabularies must agree.
    """

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None = None,
        *,
        method: str = "pard",
        num_draft_tokens: int | str = 8,
        max_draft_tokens: int = 8,
        mask_token_ids: Sequence[int] | None = None,
        target_tokenizer=None,
        draft_tokenizer=None,
    ):
        if method not in METHODS:
            raise InvalidArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.adaptive = num_draft_tokens == "auto"
        if self.adaptive:
            num_draft_tokens = max_draft_tokens
        elif not isinstance(num_draft_tokens, int):
            raise InvalidArgumentError(f"the number of draft tokens K must be an integer or 'auto', got "
                                       f"{num_draft_tokens!r}")
        if method != "ar":
            if draft is None:
                raise InvalidArgumentError(f"method {method!r} needs a draft model")
            if num_draft_tokens < 1:
                raise InvalidArgumentError(f"the number of draft tokens K must be >= 1, got {num_draft_tokens}")
            check_compatible(target, draft, target_tokenizer, draft_tokenizer)
        if method == "pard":
            mask_token_ids = list(mask_token_ids) if mask_token_ids else mask_token_ids_of(draft.config)
            if not mask_token_ids:
                raise NotAParallelDraftError(
                    "method 'pard' needs a parallel draft, but the draft's config.json has no integer 'pard_token' "
                    "(train one with `pard train`, pass a mask token id, or use --method vsd)"
                )
        self.target = target.eval()
        self.draft = draft.eval() if draft is not None and method != "ar" else None
        self.method = method
        self.num_draft_tokens = num_draft_tokens if method != "ar" else 0
        self.mask_token_ids = mask_token_ids
        self._choosers: dict[int, VerifyLengthChooser] = {}  # -k auto state per batch size
        windows = [w for w in (context_window(target), self.draft and context_window(self.draft)) if w]
        self.context_window = min(windows) if windows else None

    def _make_proposer(self, batch_size: int) -> Proposer | None:
        target_vocab = vocab_size(self.target)
        if self.method == "vsd":
            return AutoregressiveDraftProposer(self.draft, target_vocab, batch_size, self.adaptive)
        if self.method == "pard":
            return ParallelDraftProposer(self.draft, self.mask_token_ids, target_vocab, batch_size, self.adaptive)
        return None

    def _budgets(self, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
        """Per-row number of tokens to generate: max_new_tokens, capped by the context window."""
        if max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        budgets = []
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise InvalidArgumentError(f"prompt {i} is empty: give at least one token")
            if self.context_window is not None:
                if len(prompt) >= self.context_window:
                    raise PromptTooLongError(
                        f"prompt {i} has {len(prompt)} tokens but the context window is {self.context_window}; "
                        "shorten it"
                    )
                budgets.append(min(max_new_tokens, self.context_window - len(prompt)))
            else:
                budgets.append(max_new_tokens)
        return budgets

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]] | torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        sampling: SamplingConfig | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
        streamer=None,
    ) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` per row.

        Args:
            prompts: token-id lists (any lengths), or a padded (B, L) tensor with ``attention_mask`` marking the
                real tokens (left or right padding).
            sampling: greedy by default; temperature/top-k/top-p otherwise (rejection sampling keeps it lossless).
            eos_token_id: one or several ids; a row stops after emitting any of them.
            seed: seeds the sampling generator (reproducible sampled output).
            streamer: a Hugging Face ``TextStreamer``-like object (``put``/``end``), batch size 1 only.
        """
        sampling = sampling or SamplingConfig()
        prompts = _as_token_lists(prompts, attention_mask)
        if not prompts:
            raise InvalidArgumentError("no prompts given")
        if streamer is not None and len(prompts) > 1:
            raise InvalidArgumentError("streaming supports one prompt at a time")
        eos_ids = _as_id_set(eos_token_id)
        budgets = self._budgets(prompts, max_new_tokens)
        device = self.target.device
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed())

        batch_size = len(prompts)
        stats = GenerationStats(self.method, self.num_draft_tokens, adaptive=self.adaptive)
        stats.accepted_lengths = [[] for _ in prompts]
        stats.drafted_lengths = [[] for _ in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        started = time.perf_counter()

        # Committed tokens, right-padded; room for the longest row plus one step of K + 1 provisional writes.
        capacity = max(len(p) + b for p, b in zip(prompts, budgets)) + self.num_draft_tokens + 1
        sequences = torch.full((batch_size, capacity), PAD_ID, dtype=torch.long, device=device)  # (B, L)
        for i, prompt in enumerate(prompts):
            sequences[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
        rows = torch.arange(batch_size)  # original index of each active row
        remaining = torch.tensor(budgets)  # (B,) tokens each active row may still generate (host)

        if streamer is not None:
            streamer.put(torch.tensor(prompts[0]))
        target = CachedLM(self.target, batch_size)
        proposer = self._make_proposer(batch_size)
        target.feed(sequences, lengths - 1, PAD_ID, need_logits=False)
        if proposer is not None:
            proposer.prefill(sequences, lengths)
        _sync(device)
        stats.prefill_seconds = time.perf_counter() - started

        chooser = None
        if self.adaptive and proposer is not None:
            # What -k auto learned (calibration, pass costs) carries over to the next generate call of the same
            # batch size: short generations would otherwise spend most of their steps finding their feet.
            if batch_size not in self._choosers:
                self._choosers[batch_size] = VerifyLengthChooser(self.num_draft_tokens, self.method == "vsd")
            chooser = self._choosers[batch_size]
            chooser.new_generation()
        while len(rows):
            # Draft no further than the longest remaining budget needs: k + 1 tokens come out of a full accept.
            k = min(self.num_draft_tokens, int(remaining.max()) - 1)
            tick = time.perf_counter()
            proposal = offered = None
            if proposer is not None and k > 0 and (chooser is None or chooser.drafting()):
                extra = {"keep_drafting": chooser.keep_drafting} if chooser is not None and self.method == "vsd" else {}
                offered = proposer.propose(sequences, lengths, k, sampling, generator, **extra)
                _sync(device)
                k = chooser.choose(offered.confidence) if chooser is not None else offered.draft_ids.shape[1]
                proposal = offered.first(k) if k > 0 else None
            else:
                k = 0
            draft_ids = proposal.draft_ids.to(device) if proposal is not None else sequences.new_empty(len(rows), 0)
            tock = time.perf_counter()
            stats.draft_seconds += tock - tick

            last = sequences.gather(1, (lengths - 1)[:, None])  # (B, 1)
            logits = target.forward(torch.cat([last, draft_ids], dim=1))  # (B, k+1, V)
            if sampling.greedy:
                accepted, next_token = greedy_accept(draft_ids, logits)
            else:
                p = logits_to_probs(logits, sampling)  # (B, k+1, V)
                q = proposal.draft_probs.to(device) if proposal is not None else p[:, :0]
                accepted, next_token = rejection_sample(draft_ids, q, p, generator)
            # Commit: the target keeps x_last + the accepted drafts; the proposer keeps what it read correctly.
            target.rollback(lengths + accepted)
            new_tokens = torch.cat([draft_ids, draft_ids.new_zeros(len(rows), 1)], dim=1)  # (B, k+1)
            new_tokens.scatter_(1, accepted[:, None], next_token[:, None])
            write_at = lengths[:, None] + torch.arange(k + 1, device=device)  # (B, k+1)
            sequences.scatter_(1, write_at, new_tokens)
            if proposer is not None:
                proposer.rollback(lengths + accepted)
            lengths = lengths + accepted + 1
            _sync(device)
            verify_seconds = time.perf_counter() - tock
            stats.verify_seconds += verify_seconds
            stats.target_forwards += 1
            stats.speculative_steps += k > 0
            if chooser is not None:
                chooser.observe(k, offered.confidence if offered is not None else None, accepted, tock - tick,
                                verify_seconds)

            # Book-keeping on the host: per-row stats, budgets, EOS.
            keep = []
            for j, (row, a, tokens) in enumerate(zip(rows.tolist(), accepted.tolist(), new_tokens.tolist())):
                stats.accepted_lengths[row].append(a)
                stats.drafted_lengths[row].append(k)
                tokens = tokens[: min(a + 1, int(remaining[j]))]
                hit = [t for t, token in enumerate(tokens) if token in eos_ids]
                if hit:
                    tokens = tokens[: hit[0] + 1]
                outputs[row].extend(tokens)
                remaining[j] -= len(tokens)
                if streamer is not None:
                    streamer.put(torch.tensor(tokens))
                if not hit and remaining[j] > 0:
                    keep.append(j)
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long)
                rows, remaining = rows[index], remaining[index]
                index = index.to(device)
                sequences, lengths = sequences[index], lengths[index]
                target.keep_rows(index)
                if proposer is not None:
                    proposer.keep_rows(index)

        if streamer is not None:
            streamer.end()
        stats.tokens = sum(len(out) for out in outputs)
        stats.draft_forwards = proposer.draft_forwards if proposer is not None else 0
        stats.total_seconds = time.perf_counter() - started
        return GenerationOutput(outputs, stats)


def _as_token_lists(prompts, attention_mask) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim == 1:
            prompts = prompts[None]
        if attention_mask is None:
            return [row.tolist() for row in prompts]
        return [row[mask.bool()].tolist() for row, mask in zip(prompts, attention_mask)]
    return [list(map(int, p)) for p in prompts]


def _as_id_set(ids) -> set[int]:
    if ids is None:
        return set()
    if isinstance(ids, int):
        return {ids}
    return {int(i) for i in ids}


def _sync(device: torch.device) -> None:
    """Make wall-clock timings honest on asynchronous devices (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

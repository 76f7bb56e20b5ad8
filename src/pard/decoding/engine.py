"""The decoding loop: prefill -> (propose -> verify -> commit)* with per-row budgets, EOS and stats.

One engine runs all three methods; they differ only in the proposer:
  * ``ar``   no proposer, k = 0: each pass commits the target's own next token (the baseline);
  * ``vsd``  :class:`AutoregressiveDraftProposer`, k draft passes per step (paper Eq. 3);
  * ``pard`` :class:`ParallelDraftProposer`, one draft pass per step (paper Eq. 4).

Invariant between steps: the target's cache holds every committed token of a row except the last one, which is
fed first in the next verification pass: [x_last, d_1..d_k] -> k+1 target distributions in one forward.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from transformers import PreTrainedModel

from ..errors import InvalidArgumentError, NotAParallelDraftError, PromptTooLongError
from ..kernels import check_matmul
from ..mask_tokens import mask_token_ids_of
from ..models import context_window
from ..target_features import check_layers, feature_binding
from ..vocab import check_compatible, vocab_size
from .adaptive import VerifyLengthChooser
from .cache import admits_rows
from .engines import check_engine, open_lm, resolve_engine
from .features import RowFeatures
from .lm import PAD_ID, LanguageModel
from .proposers import AutoregressiveDraftProposer, ParallelDraftProposer, Proposer
from .sampling import SamplingConfig
from .stats import GenerationStats
from .step import speculative_step, synchronize

METHODS = ("ar", "vsd", "pard")
# K (or -k auto's K_max) above this is a typo, not a setting: acceptance decays geometrically with depth (PARD's
# drafts are trained with K <= 16), and each new pass width is one more compiled graph.
MAX_DRAFT_TOKENS = 64


@dataclass
class GenerationOutput:
    """sequences: per row, the generated token ids (prompt excluded, EOS included when hit); stats: counters;
    top_logprobs: with ``generate(top_logprobs=n)``, per row (log-probabilities (T, n), ids (T, n)) of the target's n
    most likely tokens at each of its T generated positions, else None."""

    sequences: list[list[int]]
    stats: GenerationStats
    top_logprobs: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    features: list[torch.Tensor] | None = None  # return_features: per row (T - 1, F), see generate


def check_draft_length(num_draft_tokens: int | str, max_draft_tokens: int = 8) -> None:
    """K is an integer in [0, MAX_DRAFT_TOKENS] (0 only for plain decoding, which the decoder checks), or ``"auto"``
    with ``max_draft_tokens`` in [1, MAX_DRAFT_TOKENS]. Cheap: commands call it before loading any model."""
    auto = num_draft_tokens == "auto"
    value, name = (max_draft_tokens, "--max-k") if auto else (num_draft_tokens, "K")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"the number of draft tokens K must be an integer or 'auto', got {value!r}")
    if value > MAX_DRAFT_TOKENS:
        raise InvalidArgumentError(f"{name} {value} is more draft tokens than a step can use (at most "
                                   f"{MAX_DRAFT_TOKENS})")
    if auto and value < 1:
        raise InvalidArgumentError(f"--max-k must be >= 1, got {value}")


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
        engine: ``"auto"``, ``"eager"``, ``"static"`` or ``"compiled"`` (see :mod:`pard.decoding.engines`).
        matmul: ``"auto"``, ``"kernel"`` or ``"library"``: whether the static paths multiply through the small-row
            kernel (:mod:`pard.kernels`).
        target_features: let a feature draft read the target's hidden states when it was made for this target
            (:func:`pard.target_features.feature_binding` decides, and says in one line when it does not);
            False runs it as a plain PARD draft.
        feature_layers: target layers whose hidden states ``generate(return_features=True)`` returns (what
            ``pard regenerate --store-features`` keeps).
        expected_tokens: how many tokens this decoder will generate in all, when known: ``auto`` compiles only
            when that pays back (None: judged from the first ``generate`` call's budget).
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
        engine: str = "auto",
        expected_tokens: int | None = None,
        matmul: str = "auto",
        target_features: bool = True,
        feature_layers: Sequence[int] | None = None,
    ):
        if method not in METHODS:
            raise InvalidArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        auto = num_draft_tokens == "auto"
        check_draft_length(num_draft_tokens, max_draft_tokens)
        if auto:
            num_draft_tokens = max_draft_tokens
        self.adaptive = auto and method != "ar"  # plain decoding drafts nothing: there is no k to choose
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
        self.engine = check_engine(engine)
        self.matmul = check_matmul(matmul)
        self.expected_tokens = expected_tokens
        self._resolved_engine: str | None = None
        windows = [w for w in (context_window(target), self.draft and context_window(self.draft)) if w]
        self.context_window = min(windows) if windows else None
        binding = feature_binding(self.target, self.draft, method=method, enabled=target_features)
        if binding.reason:
            _say_once(binding.reason)
        self.draft_layers = binding.layers or ()  # the target layers the draft reads (empty: target-independent)
        text_config = target.config.get_text_config() if hasattr(target.config, "get_text_config") else target.config
        self.store_layers = tuple(check_layers(list(feature_layers), text_config.num_hidden_layers)
                                  if feature_layers else ())
        # What target passes return: the draft's layers first (its columns of the buffer are then a prefix)
        self.hidden_layers = tuple(dict.fromkeys((*self.draft_layers, *self.store_layers)))
        self._hidden_size = text_config.hidden_size

    def _engine_for(self, tokens: int) -> str:
        """The engine path, resolved once (``auto`` judges by ``expected_tokens``, else by the first call's)."""
        if self._resolved_engine is None:
            models = [self.target] + ([self.draft] if self.draft is not None else [])
            expected = self.expected_tokens if self.expected_tokens is not None else tokens
            self._resolved_engine = resolve_engine(self.engine, models, expected, self.matmul)
        return self._resolved_engine

    @cached_property  # asked by every pooled generate call (and by regenerate per group); the models do not change
    def admits_new_rows(self) -> bool:
        """Whether ``generate(max_batch_size=...)`` can refill finished rows with waiting prompts (every model here
        but those with sliding-window attention)."""
        return all(admits_rows(m) for m in (self.target, self.draft) if m is not None)

    def _target_buckets(self) -> tuple[int, ...]:
        """Verification pass widths compiled: 1 (AR, or -k auto not drafting) and K + 1; with -k auto, the
        widths in between are padded to 2, 3, 5, 9, 17... (a handful of shapes, each at most 2x the tokens)."""
        widths = {1, self.num_draft_tokens + 1}
        if self.adaptive:
            widths |= {2 ** j + 1 for j in range(self.num_draft_tokens.bit_length()) if 2**j < self.num_draft_tokens}
        return self._fitting(widths)

    def _fitting(self, widths: set[int]) -> tuple[int, ...]:
        """The widths a pass can have within the context window (a wider one never runs: not worth compiling)."""
        window = self.context_window or max(widths)
        return tuple(sorted({min(w, window) for w in widths}))

    def _draft_buckets(self) -> tuple[int, ...]:
        """Draft pass widths compiled."""
        k = self.num_draft_tokens
        if self.method == "vsd":  # one token per pass, after a first pass over the 1..k+1 tokens accepted last step
            return self._fitting({1, 2, 4, k + 1} if k > 3 else {1, k + 1})
        return self._fitting({b for b in (1, k, (3 * k) // 2, 2 * k) if b > 0})  # pard: 1..k+1 unread + k-1 masks

    def _make_proposer(self, lm: LanguageModel, batch_size: int) -> Proposer:
        target_vocab = vocab_size(self.target)
        if self.method == "vsd":
            return AutoregressiveDraftProposer(self.draft, target_vocab, batch_size, self.adaptive, lm)
        return ParallelDraftProposer(self.draft, self.mask_token_ids, target_vocab, batch_size, self.adaptive, lm)

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
        top_logprobs: int = 0,
        max_batch_size: int | None = None,
        on_finish: Callable[..., None] | None = None,
        return_features: bool = False,
    ) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` per row.

        Args:
            prompts: token-id lists (any lengths), or a padded (B, L) tensor with ``attention_mask`` marking the
                real tokens (left or right padding).
            sampling: greedy by default; temperature/top-k/top-p otherwise (rejection sampling keeps it lossless).
            eos_token_id: one or several ids; a row stops after emitting any of them.
            seed: seeds the sampling generator (reproducible sampled output).
            streamer: a Hugging Face ``TextStreamer``-like object (``put``/``end``), batch size 1 only.
            top_logprobs: also return, for every generated token, the target's n most likely tokens and their
                log-probabilities (temperature 1): the distribution the token was drawn from or checked against.
                What is generated does not change. ``pard regenerate`` stores them for distillation.
            max_batch_size: decode at most this many rows at once (continuous batching): when a row finishes, the
                next waiting prompt takes its place while the others keep decoding, so no pass is spent on
                finished rows. Each row's output is what it would be alone (greedy). None: all prompts at once.
            on_finish: called as ``on_finish(index, tokens, top_logprobs, features)`` when prompt ``index`` is done
                (its tokens; its (log-probabilities (T, n), ids (T, n)) with ``top_logprobs``, else None; its
                features with ``return_features``, else None), so a caller can save finished rows while the others
                decode.
            return_features: also return, per row, the target's hidden states at the decoder's ``feature_layers``
                for every token of prompt + output but the last: (T - 1, F) for T tokens, row t = the state at
                position t (what `pard regenerate --store-features` keeps for feature drafts).
        """
        sampling = sampling or SamplingConfig()
        prompts = _as_token_lists(prompts, attention_mask)
        if not prompts:
            raise InvalidArgumentError("no prompts given")
        if streamer is not None and len(prompts) > 1:
            raise InvalidArgumentError("streaming supports one prompt at a time")
        if top_logprobs < 0:
            raise InvalidArgumentError(f"top_logprobs must be >= 0, got {top_logprobs}")
        if top_logprobs > vocab_size(self.target):
            raise InvalidArgumentError(f"top_logprobs (--top-logprobs) {top_logprobs} is more than the target's "
                                       f"vocabulary of {vocab_size(self.target):,} tokens")
        if max_batch_size is not None and max_batch_size < 1:
            raise InvalidArgumentError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if return_features and not self.store_layers:
            raise InvalidArgumentError("return_features needs the decoder's feature_layers (which layers to return)")
        batch_size = min(max_batch_size or len(prompts), len(prompts))
        if batch_size < len(prompts) and not self.admits_new_rows:
            raise InvalidArgumentError("models with sliding-window attention cannot refill rows: pass at most "
                                       "max_batch_size prompts per call")
        eos_ids = _as_id_set(eos_token_id)
        budgets = self._budgets(prompts, max_new_tokens)
        device = self.target.device
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed())

        stats = GenerationStats(self.method, self.num_draft_tokens, adaptive=self.adaptive)
        stats.accepted_lengths = [[] for _ in prompts]
        stats.drafted_lengths = [[] for _ in prompts]
        outputs: list[list[int]] = [[] for _ in prompts]
        tops: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in prompts]  # per row, per step
        finished_features: dict[int, torch.Tensor] = {}  # return_features: per prompt, (T - 1, F)
        started = time.perf_counter()

        # Committed tokens, right-padded; room for the longest row plus one step of K + 1 provisional writes.
        capacity = max(len(p) + b for p, b in zip(prompts, budgets)) + self.num_draft_tokens + 1
        sequences = torch.full((batch_size, capacity), PAD_ID, dtype=torch.long, device=device)  # (B, L)
        lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        # The target's feature of each committed token, riding along with the rows (pard.decoding.features).
        features = None
        if self.hidden_layers:
            features = RowFeatures(self.hidden_layers, self.draft_layers, self.store_layers, self._hidden_size,
                                   batch_size, capacity, self.target.dtype, device)

        def place(j: int, index: int) -> None:
            """Row j of the batch holds prompt ``index`` (its committed tokens so far: the prompt)."""
            sequences[j] = PAD_ID
            if features is not None:
                features.clear(j)
            sequences[j, : len(prompts[index])] = torch.tensor(prompts[index], dtype=torch.long)
            lengths[j] = len(prompts[index])

        for j in range(batch_size):
            place(j, j)
        waiting = deque(range(batch_size, len(prompts)))  # prompts not admitted yet, in order
        rows = torch.arange(batch_size)  # original index of each active row
        remaining = torch.tensor(budgets[:batch_size])  # (B,) tokens each active row may still generate (host)

        if streamer is not None:
            streamer.put(torch.tensor(prompts[0]))
        engine = self._engine_for(sum(budgets))
        target = open_lm(engine, "target", self.target, batch_size, capacity, self._target_buckets(), self.matmul,
                         hidden_layers=self.hidden_layers)
        draft = None if self.method == "ar" else open_lm(engine, "draft", self.draft, batch_size, capacity,
                                                         self._draft_buckets(), self.matmul,
                                                         reads_features=bool(self.draft_layers))
        proposer = self._make_proposer(draft, batch_size) if draft is not None else None
        lms = [target] + ([draft] if draft is not None else [])  # target first

        def compiled_so_far() -> list[float]:
            return [lm.compile_seconds for lm in lms]

        compiling = compiled_so_far()
        chooser = None
        if self.adaptive and proposer is not None:
            # What -k auto learned (calibration, pass costs, whether drafting pays) carries over to the next
            # generate call of the same batch size: short generations would otherwise spend most of their steps
            # finding their feet.
            if batch_size not in self._choosers:
                self._choosers[batch_size] = VerifyLengthChooser(self.num_draft_tokens, self.method == "vsd")
            chooser = self._choosers[batch_size]
            chooser.new_generation()
        read = target.feed(sequences, lengths - 1, PAD_ID, need_logits=False, return_hidden=features is not None)
        if features is not None:  # h_0 .. h_{n-2}: the features of tokens 1 .. n-1
            features.write_prompts(torch.arange(batch_size, device=device), read[1])
        draft_features = features.draft_view() if features is not None else None
        if chooser is not None:
            chooser.profile(target, lambda: synchronize(device))  # T(1..K+1): the first call of a batch size only
        if proposer is not None and (chooser is None or not chooser.switched_off):
            # (while -k auto decodes plainly, its first probe reads the prompt)
            proposer.prefill(sequences, lengths, draft_features)
        synchronize(device)
        stats.engine = engine
        stats.matmul = _matmul_of(lms)
        stats.target_features = list(self.draft_layers) or None
        stats.compile_seconds = sum(compiled_so_far()) - sum(compiling)
        stats.prefill_seconds = time.perf_counter() - started - stats.compile_seconds

        while len(rows):
            # Draft no further than the longest remaining budget needs: k + 1 tokens come out of a full accept.
            k = min(self.num_draft_tokens, int(remaining.max()) - 1)
            compiling = compiled_so_far()
            step = speculative_step(target, proposer, chooser, sequences, lengths, k, sampling, generator,
                                    top_logprobs, features.buffer if features is not None else None,
                                    draft_features)
            # A shape met for the first time compiles inside its pass: that is not decoding time.
            target_compile, *draft_compile = (now - before for now, before in zip(compiled_so_far(), compiling))
            draft_compile = sum(draft_compile)
            compiled = draft_compile + target_compile
            k, accepted, new_tokens, lengths = step.k, step.accepted, step.new_tokens, step.lengths
            stats.compile_seconds += compiled
            stats.draft_seconds += step.draft_seconds - draft_compile
            stats.verify_seconds += step.verify_seconds - target_compile
            stats.target_forwards += 1
            stats.speculative_steps += k > 0
            if chooser is not None and not compiled:
                chooser.observe(k, step.confidence, accepted, step.draft_seconds, step.verify_seconds)

            # Book-keeping on the host: per-row stats, budgets, EOS.
            top = [t.cpu() for t in step.top_logprobs] if step.top_logprobs is not None else None
            keep, admitted = [], []
            for j, (row, a, tokens) in enumerate(zip(rows.tolist(), accepted.tolist(), new_tokens.tolist())):
                stats.accepted_lengths[row].append(a)
                stats.drafted_lengths[row].append(k)
                tokens = tokens[: min(a + 1, int(remaining[j]))]
                hit = [t for t, token in enumerate(tokens) if token in eos_ids]
                if hit:
                    tokens = tokens[: hit[0] + 1]
                outputs[row].extend(tokens)
                if top is not None:
                    tops[row].append((top[0][j, : len(tokens)], top[1][j, : len(tokens)]))  # 2 x (tokens, n)
                remaining[j] -= len(tokens)
                if streamer is not None:
                    streamer.put(torch.tensor(tokens))
                if not hit and remaining[j] > 0:
                    keep.append(j)
                    continue
                if return_features:
                    finished_features[row] = features.stored(j, len(prompts[row]) + len(outputs[row]))
                if on_finish is not None:
                    on_finish(row, outputs[row], _joined(tops[row]) if top_logprobs else None,
                              finished_features.get(row))
                if waiting:  # the next prompt takes the finished row's place
                    index = waiting.popleft()
                    place(j, index)
                    rows[j], remaining[j] = index, budgets[index]
                    keep.append(j)
                    admitted.append(j)
            if admitted:
                tick = time.perf_counter()
                index = torch.tensor(admitted, device=device)
                hidden = target.admit(index, sequences, lengths - 1, return_hidden=features is not None)
                if features is not None:
                    features.write_prompts(index, hidden)
                if proposer is not None:
                    proposer.admit(index, sequences, lengths, draft_features)
                synchronize(device)
                stats.prefill_seconds += time.perf_counter() - tick
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long)
                rows, remaining = rows[index], remaining[index]
                index = index.to(device)
                sequences, lengths = sequences[index], lengths[index]
                if features is not None:
                    features.keep_rows(index)
                    draft_features = features.draft_view()
                target.keep_rows(index)
                if proposer is not None:
                    proposer.keep_rows(index)

        if streamer is not None:
            streamer.end()
        stats.tokens = sum(len(out) for out in outputs)
        stats.draft_forwards = proposer.draft_forwards if proposer is not None else 0
        stats.total_seconds = time.perf_counter() - started - stats.compile_seconds
        top_logprobs_out = [_joined(row) for row in tops] if top_logprobs else None
        features_out = [finished_features[i] for i in range(len(prompts))] if return_features else None
        return GenerationOutput(outputs, stats, top_logprobs_out, features_out)


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """One line on stderr per process: a benchmark builds a decoder per method and K over the same pair."""
    if line not in _SAID:
        _SAID.add(line)
        print(f"pard: {line}", file=sys.stderr)


def _matmul_of(lms: list[LanguageModel]) -> str:
    """What multiplied the target's (and draft's) small-row passes: ``kernel (ISA)`` or ``library``."""
    if not getattr(lms[0], "small_rows", False):
        return "library"
    from ..kernels import kernel_isa

    return f"kernel ({kernel_isa()})"


def _joined(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's per-step (log-probabilities (t, n), ids (t, n)) -> the whole row's (T, n) pair."""
    return tuple(torch.cat(part) for part in zip(*parts))


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


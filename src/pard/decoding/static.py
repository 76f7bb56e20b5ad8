"""A causal LM with a static, position-written KV cache (gpt-fast style), for eager or compiled decoding.

Same contract as :class:`~pard.decoding.cache.CachedLM` (``tests/test_lm_contract.py``), different mechanics:

* every layer's keys and values live in one preallocated buffer (B, H_kv, S_max, D); a forward writes its T new
  slots at ``[size, size + T)`` with ``index_copy_`` — no per-step ``torch.cat`` or reallocation;
* rollback only edits the per-row slot mask and moves ``size`` back to just past the last slot any row still uses
  (gpt-fast's "rollback is moving a length", made per row); stale keys past ``size`` are overwritten next time;
* when ragged rollbacks have left so many holes that the next pass would not fit, the live slots of every row are
  moved to the front once (keys are stored after RoPE, so moving a slot does not change what it encodes);
* finished rows stay in the buffers (their outputs are dropped), so the batch dimension never changes shape; a
  row can also start over on a new prompt (``admit``: its prefill is an eager pass over that buffer row only);
* passes of up to ``max(buckets)`` tokens are padded to the next bucket, so a compiled step sees a handful of
  fixed shapes (B, T_bucket) and never recompiles after warm-up; prefill and longer passes run eagerly.

The layer loop calls the Hugging Face model's own modules (norms, rotary embedding, the MLP's activation) and
their weights (projections, LM head: through the small-row kernel on CPU, see :mod:`pard.kernels`, or their own
``nn.Linear``); the gated MLP's arithmetic and attention over the slot buffers are ours: scaled-dot-product
attention with a boolean (B, 1, T, S_max) mask ``slot is real in this row and not after the query`` and
grouped-query heads broadcast by SDPA (no ``repeat_kv`` copy). Supported: decoder-only Llama-style models (llama,
mistral, qwen2, qwen3 without sliding windows); :func:`supports_static_cache` says so for a given model, and the
engine falls back to ``CachedLM`` otherwise.
"""

from __future__ import annotations

import time
from importlib import import_module

import torch
import torch._dynamo.config
import torch._inductor.config
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..draft_vocab import subset_head_of
from ..target_features import adapter_of
from .lm import PAD_ID, ragged_features, ragged_slices

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PROJECTIONS = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
               "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
               "down": ("mlp", "down_proj")}
# The projections a layer applies to one input, in one matmul where the kernel runs them (stacked weights).
GROUPS = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"), "down": ("down",)}
RECOMPILE_LIMIT = 256
SPAN_STEP = 64  # eager passes attend to the slots in use, rounded up to this


def supports_static_cache(model: PreTrainedModel) -> bool:
    """Whether :class:`StaticLM` can run ``model`` (a Llama-style decoder with full attention in every layer)."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # mistral's and qwen's sliding windows would need a ring buffer
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    return all(hasattr(getattr(layer, part, None), attr) for layer in inner.layers
               for part, attr in (*PROJECTIONS.values(), ("mlp", "act_fn")))  # the gated MLP the decoder computes


def _small_row_linear(*modules: nn.Module) -> nn.Module:
    from ..kernels import SmallRowLinear

    return SmallRowLinear(*modules)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class _Each(nn.Module):
    """The library form of a group: each projection applied to the input -> a tuple (one module: itself)."""

    def __init__(self, *linears: nn.Module):
        super().__init__()
        self.linears = nn.ModuleList(linears)

    def forward(self, x):
        out = tuple(m(x) for m in self.linears)
        return out if len(out) > 1 else out[0]


class _SubsetLogits(nn.Module):
    """A reduced-vocabulary head (:class:`~pard.draft_vocab.SubsetHead`) whose N-row projection runs elsewhere:
    hidden (..., H) -> logits over the vocabulary (..., V), -inf outside the subset (as SubsetHead in eval)."""

    def __init__(self, projection: nn.Module, token_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        self.projection, self.vocab_size = projection, vocab_size
        self.register_buffer("token_ids", token_ids, persistent=False)

    def forward(self, hidden):
        logits = self.projection(hidden)  # (..., N)
        full = logits.new_full((*logits.shape[:-1], self.vocab_size), float("-inf"))  # (..., V)
        return full.index_copy_(-1, self.token_ids, logits)


class _Decoder(nn.Module):
    """The pure, shape-static part of a pass: embed -> layers over the slot buffers -> norm -> LM head.

    Everything it is given is a tensor (no Python ints that change per step), so one compiled graph per input
    shape serves the whole generation. With ``small_rows`` every matmul (the seven projections of each layer and
    the LM head, at the positions whose logits are asked for) goes through :class:`~pard.kernels.SmallRowLinear`:
    a pass of a few rows streams each weight once (README, *Verification at the memory bound*).
    """

    def __init__(self, model: PreTrainedModel, batch_size: int, capacity: int, small_rows: bool = False,
                 hidden_layers: tuple[int, ...] = (), reads_features: bool = False):
        super().__init__()
        inner = model.model
        config = model.config
        self.embed_tokens, self.layers, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.rotary_emb = inner.rotary_emb
        # transformers' hidden_states: 0 = embeddings, i = after layer i - 1, L = the last layer after the norm
        self.hidden_at = tuple(i % (len(self.layers) + 1) for i in hidden_layers)
        self.adapter = adapter_of(model) if reads_features else None
        group = _small_row_linear if small_rows else _Each

        def linears(layer, names):
            return [getattr(getattr(layer, PROJECTIONS[n][0]), PROJECTIONS[n][1]) for n in names]

        # Per layer, the projection groups: the model's own nn.Linear modules, or one kernel matmul per group.
        self.proj = nn.ModuleList(nn.ModuleDict({name: group(*linears(layer, names)) for name, names in GROUPS.items()})
                                  for layer in self.layers)
        subset = subset_head_of(model)
        if small_rows and subset is not None:
            self.lm_head = _SubsetLogits(group(subset), subset.token_ids, subset.vocab_size)
        else:
            self.lm_head = group(model.lm_head)
        self.apply_rope = import_module(type(model).__module__).apply_rotary_pos_emb
        attention = self.layers[0].self_attn
        self.head_dim = attention.head_dim
        self.scaling = attention.scaling
        dtype = self.embed_tokens.weight.dtype
        shape = (batch_size, config.num_key_value_heads, capacity, self.head_dim)  # (B, H_kv, S_max, D)
        for i in range(len(self.layers)):
            self.register_buffer(f"k_{i}", torch.zeros(shape, dtype=dtype, device=model.device), persistent=False)
            self.register_buffer(f"v_{i}", torch.zeros(shape, dtype=dtype, device=model.device), persistent=False)

    def caches(self):
        return [(getattr(self, f"k_{i}"), getattr(self, f"v_{i}")) for i in range(len(self.layers))]

    def forward(self, input_ids, positions, slots, attend, logits_at, rows=None, features=None):
        """input_ids, positions (B, T); slots (T,) where the T new keys go; attend (B, 1, T, S) bool over the first
        S slots of the buffers (S_max in compiled steps, one shape; eager passes give only the slots in use, so
        attention reads a few hundred slots, not the whole buffer); logits_at (B, n) indices into T whose logits
        are returned -> (B, n, V). ``rows`` (R,): a pass over those buffer rows only (B = R; eager, to prefill newly
        admitted prompts). ``features`` (B, T, F): target features a feature draft adds to its embeddings. With
        ``hidden_at`` (a target feeding such a draft) it returns (logits, the chosen hidden states (B, T, F))."""
        hidden = self.embed_tokens(input_ids)  # (B, T, D_model)
        if self.adapter is not None:  # token embedding + scale * W n(f) (PARD-2; zero features add nothing)
            hidden = hidden + self.adapter(features).to(hidden.dtype)
        cos, sin = self.rotary_emb(hidden, positions)  # (B, T, D)
        batch_size, num_new = input_ids.shape
        span = attend.shape[-1]  # S: the slots attended to
        states = [hidden] if 0 in self.hidden_at else []
        for index, (layer, proj, (k_all, v_all)) in enumerate(zip(self.layers, self.proj, self.caches()), 1):
            k_cache, v_cache = (k_all, v_all) if rows is None else (k_all[rows], v_all[rows])  # (B, H_kv, S_max, D)
            attn = layer.self_attn
            q, k, v = proj["qkv"](layer.input_layernorm(hidden))
            q = q.reshape(batch_size, num_new, -1, self.head_dim)  # (B, T, H, D)
            k = k.reshape(batch_size, num_new, -1, self.head_dim)  # (B, T, H_kv, D)
            if hasattr(attn, "q_norm"):  # qwen3 normalises each head before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            v = v.reshape(batch_size, num_new, -1, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
            q, k = self.apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            k_cache.index_copy_(2, slots, k)
            v_cache.index_copy_(2, slots, v)
            out = F.scaled_dot_product_attention(
                q, k_cache[:, :, :span], v_cache[:, :, :span], attn_mask=attend, scale=self.scaling, enable_gqa=True
            )  # (B, H, T, D)
            if rows is not None:  # the rows' caches were gathered copies: write them back
                k_all[rows], v_all[rows] = k_cache, v_cache
            hidden = hidden + proj["o"](out.transpose(1, 2).reshape(batch_size, num_new, -1))
            gate, up = proj["gate_up"](layer.post_attention_layernorm(hidden))
            hidden = hidden + proj["down"](layer.mlp.act_fn(gate) * up)  # the gated MLP
            if index in self.hidden_at and index < len(self.layers):
                states.append(hidden)
        hidden = self.norm(hidden)
        picked = hidden.gather(1, logits_at[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, n, D_model)
        logits = self.lm_head(picked)  # (B, n, V)
        if not self.hidden_at:
            return logits
        by_index = dict(zip(sorted(i for i in self.hidden_at if i < len(self.layers)), states))
        by_index[len(self.layers)] = hidden
        return logits, torch.cat([by_index[i] for i in self.hidden_at], dim=-1)  # (B, T, F)


class StaticLM:
    """``model`` + preallocated per-layer KV buffers + the per-row slot mask; optionally compiled steps.

    Args:
        model: a Llama-style causal LM (:func:`supports_static_cache`).
        batch_size: B, fixed for the object's life (finished rows are masked, not removed).
        small_rows: run every matmul of a pass of few rows through the small-row kernel (:mod:`pard.kernels`;
            float32 CPU models only: :func:`pard.kernels.use_kernel` decides).
        capacity: S_max, slots per row; holds the longest row plus one pass (holes are compacted away).
        buckets: pass widths the decode step is specialised to; a pass of T tokens is padded to the smallest
            bucket >= T; wider passes run eagerly (unpadded).
        compile: ``torch.compile`` the step (inductor on CPU; CUDA graphs via ``reduce-overhead`` on CUDA), or a
            backend name (``"eager"`` compiles nothing but still traces: what the recompilation test uses).
    """

    def __init__(self, model: PreTrainedModel, batch_size: int, capacity: int, buckets=(1,), compile=False,
                 small_rows: bool = False, hidden_layers: tuple[int, ...] = (), reads_features: bool = False):
        self.device = model.device  # (no reference to the model itself: its submodules are enough)
        self.batch_size = batch_size
        self.capacity = capacity
        self.buckets = tuple(sorted(set(buckets)))
        self.small_rows = small_rows
        self.hidden_layers = tuple(hidden_layers)
        self.reads_features = reads_features and adapter_of(model) is not None
        self._feature_size = adapter_of(model).proj.in_features if self.reads_features else 0
        self.decoder = _Decoder(model, batch_size, capacity, small_rows, self.hidden_layers,
                                self.reads_features).eval()
        self.step = self.decoder
        self.compiled = bool(compile)
        self.compile_seconds = 0.0  # first passes of each shape through the compiled step
        self._seen_shapes: set[tuple[int, ...]] = set()
        self._inductor_config = {}
        if compile:
            options = compile_options(self.device, compile)
            # Inductor reads freezing/max-autotune from its global config when a graph is compiled (passing them
            # as torch.compile(options=...) leaves freezing off): set them around compilations only.
            self._inductor_config = options.pop("inductor_config", {})
            self.step = torch.compile(self.decoder, dynamic=False, **options)
            # Every (model, batch size, capacity, bucket) is one graph of the same Python function; past dynamo's
            # default of 8 it would silently run the rest eagerly (a benchmark of several methods and datasets
            # needs a few dozen).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self.reset()

    @property
    def packed_bytes(self) -> int:
        """Memory held by the kernel's packed copies of this model's weights (shared with its other static caches)."""
        from ..kernels import SmallRowLinear

        packed = {id(m.packed): m.packed_bytes for m in self.decoder.modules() if isinstance(m, SmallRowLinear)}
        return sum(packed.values())

    def reset(self) -> None:
        """Forget every row (a new generation of the same batch size reuses the buffers and compiled steps)."""
        self.slot_mask = torch.zeros(self.batch_size, self.capacity, dtype=torch.bool, device=self.device)
        self.size = 0  # slots in use: [0, size) may hold real tokens; nothing past it does
        self.active = torch.arange(self.batch_size, device=self.device)  # the engine's rows -> buffer rows
        self._slot_ids = torch.arange(self.capacity, device=self.device)

    @property
    def lengths(self) -> torch.Tensor:
        """(B',) number of real tokens cached per active row (= the position of the row's next token)."""
        return self.slot_mask[self.active].sum(dim=1)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, logits_at: torch.Tensor | None = None,
                features: torch.Tensor | None = None, return_hidden: bool = False):
        """Append input_ids (B', T) after each active row's real tokens; return logits (B', T, V), only the last
        ``logits_to_keep`` positions when > 0, or only the positions ``logits_at`` (B', n) when given.
        ``features`` (B', T, F) for a draft that reads them; ``return_hidden``: (logits, hidden (B', T, F))."""
        return self._forward(input_ids, logits_to_keep, logits_at, True, features, return_hidden)

    @torch.inference_mode()
    def _forward(self, input_ids, logits_to_keep, logits_at, compiled: bool, features=None, return_hidden=False):
        num_rows, num_new = input_ids.shape
        width = self._bucket(num_new)  # T padded to a bucket
        if self.size + width > self.capacity:
            self._compact()
        if self.size + width > self.capacity:
            raise RuntimeError(f"static KV cache full: {self.size} + {width} slots > capacity {self.capacity}")
        ids = torch.full((self.batch_size, width), PAD_ID, dtype=torch.long, device=self.device)  # (B, T_b)
        ids[self.active, :num_new] = input_ids.to(self.device)
        lengths = self.slot_mask.sum(dim=1)  # (B,)
        offsets = torch.arange(width, device=self.device)
        positions = lengths[:, None] + offsets  # (B, T_b)
        slots = self.size + offsets  # (T_b,)
        self.slot_mask[self.active, self.size : self.size + width] = True
        visible = self.slot_mask.clone()
        visible[:, self.size : self.size + width] = True  # finished rows too: a query always sees itself
        # Query t of row b sees the real slots of row b up to its own: (B, 1, T_b, S_max).
        attend = visible[:, None, None, :] & (self._slot_ids <= slots[:, None])[None, None]
        if logits_at is None:
            first = num_new - logits_to_keep if logits_to_keep > 0 else 0
            logits_at = torch.arange(first, num_new, device=self.device).expand(num_rows, -1)
        num_logits = logits_at.shape[1]
        # The LM head runs at the asked positions only; their number is padded to a bucket too (fixed shapes).
        picks = torch.zeros(self.batch_size, self._bucket(num_logits), dtype=torch.long, device=self.device)
        picks[self.active, :num_logits] = logits_at.to(self.device)
        step = self.step if compiled and width in self.buckets else self.decoder  # prefill passes stay eager
        if step is self.decoder:  # no fixed shape to keep: attend to the slots in use only (rounded: fewer sizes)
            attend = attend[..., : min(round_up(self.size + width, SPAN_STEP), self.capacity)]
        padded = None
        if self.reads_features:  # (B, T_b, F): zeros for finished rows, padding and a target-independent pass
            padded = torch.zeros(self.batch_size, width, self._feature_size, device=self.device)
            if features is not None:
                padded[self.active, :num_new] = features.to(self.device, padded.dtype)
        out = self._run(step, ids, positions, slots, attend, picks, padded)  # (B, n_b, V) [+ (B, T_b, F)]
        self.size += width
        if width > num_new:  # the padding never counts as real
            self.slot_mask[:, self.size - width + num_new : self.size] = False
            self._shrink()
        logits, hidden = out if self.hidden_layers else (out, None)
        logits = logits[self.active, :num_logits]
        return (logits, hidden[self.active, :num_new]) if return_hidden else logits

    def add_buckets(self, buckets) -> None:
        """Also specialise to these pass widths (each new one compiles once, on first use)."""
        self.buckets = tuple(sorted(set(self.buckets) | set(buckets)))

    def _bucket(self, num_tokens: int) -> int:
        """The smallest bucket holding ``num_tokens``, or ``num_tokens`` itself past the largest."""
        return next((b for b in self.buckets if b >= num_tokens), num_tokens)

    def _run(self, step, ids, positions, slots, attend, picks, features):
        """One pass; the first pass of each new shape through a compiled step is timed as compile time."""
        inputs = (ids, positions, slots, attend, picks)
        if features is not None:
            return self._run_once(step, inputs, {"features": features})
        return self._run_once(step, inputs, {})

    def _run_once(self, step, inputs, kwargs):
        shape = tuple(inputs[0].shape) + tuple(inputs[4].shape)  # ids (B, T_b) and picks (B, n_b)
        if step is self.decoder:
            return step(*inputs, **kwargs)
        if shape in self._seen_shapes:
            # This step has a graph for this shape: let dynamo check only the guards that tell its graphs apart
            # (0.4-0.6 ms of a 3 ms step otherwise, dozens of checks per weight). It still raises, before running
            # anything, rather than run a wrong graph if an input ever needed a new one.
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return step(*inputs, **kwargs)
            except RuntimeError as err:
                if "skip_guard_eval_unsafe" not in str(err):
                    raise
                self._seen_shapes.discard(shape)  # dynamo dropped its graphs (torch._dynamo.reset()): compile anew
        started = time.perf_counter()
        with torch._inductor.config.patch(self._inductor_config):
            out = step(*inputs, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_seconds += time.perf_counter() - started
        self._seen_shapes.add(shape)
        return out

    def rollback(self, lengths: torch.Tensor) -> None:
        """Keep only the first ``lengths[i]`` real tokens of active row i (lengths (B',))."""
        mask = self.slot_mask[self.active]  # (B', S_max)
        rank = mask.long().cumsum(dim=1)  # 1-based rank of each real slot in its row
        self.slot_mask[self.active] = mask & (rank <= lengths.to(self.device)[:, None])
        self._shrink()

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Finished rows leave: ``rows`` (B'',) index the current active rows. Their buffer rows stay, unused."""
        dropped = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        self.active = self.active[rows.to(self.device)]
        dropped[self.active] = False
        self.slot_mask[dropped] = False
        self._shrink()

    def feed(self, sequences: torch.Tensor, ends: torch.Tensor, pad_id: int = PAD_ID, need_logits: bool = True,
             features: torch.Tensor | None = None, return_hidden: bool = False):
        """Read ``sequences[i, lengths[i]:ends[i]]`` for every active row in one forward; return the logits at each
        row's last token read (B', V), or None when ``need_logits`` is False. ``features`` (B', L, F) are read at
        the same slices; ``return_hidden``: (logits or None, hidden states at the positions read (B', T, F))."""
        sequences, ends = sequences.to(self.device), ends.to(self.device)
        start = self.lengths
        ids, counts = ragged_slices(sequences, start, ends, pad_id)  # (B', T), (B',)
        if ids.shape[1] == 0:
            return (None, None) if return_hidden else None
        pending = ragged_features(features, start, ends) if features is not None else None  # (B', T, F)
        last = (counts - 1).clamp_min(0)[:, None]  # (B', 1)
        # A read that needs no logits is a prefill: once per generation, of any length, so not worth a compiled
        # shape (and a short prompt would otherwise meet a new one).
        out = self._forward(ids, 0, last, need_logits, pending, return_hidden)  # (B', 1, V) [, (B', T, F)]
        logits, hidden = out if return_hidden else (out, None)
        self.rollback(start + counts)
        logits = logits[:, 0] if need_logits else None
        return (logits, hidden) if return_hidden else logits

    @torch.inference_mode()
    def admit(self, rows: torch.Tensor, sequences: torch.Tensor, ends: torch.Tensor,
              features: torch.Tensor | None = None, return_hidden: bool = False):
        """Active rows ``rows`` (R,) start over on ``sequences[r, :ends[r]]``: an eager pass over their buffer rows
        only, written at the front of the buffer (every slot of a forgotten row is free; the next pass of the whole
        batch still writes at ``size``, past them). ``features`` (B', L, F): every active row's token features;
        ``return_hidden``: return the hidden states at the new prompts' positions (R, T, F)."""
        buffer_rows = self.active[rows.to(self.device)]  # (R,)
        self.slot_mask[buffer_rows] = False
        if features is not None:
            features = features.to(self.device)[rows.to(self.device)]
        sequences, ends = sequences.to(self.device)[rows], ends.to(self.device)[rows]
        ids, counts = ragged_slices(sequences, torch.zeros_like(ends), ends)  # (R, T), (R,)
        num_new = ids.shape[1]
        hidden = None
        if num_new:
            if num_new > self.capacity:
                raise RuntimeError(f"static KV cache full: a {num_new}-token prompt > capacity {self.capacity}")
            slots = self._slot_ids[:num_new]  # (T,)
            positions = slots.expand(len(rows), -1)  # (R, T)
            # Causal over the new slots only; padding queries see themselves too (no empty softmax row).
            span = min(round_up(num_new, SPAN_STEP), self.capacity)
            causal = (self._slot_ids[:span] <= slots[:, None]) & (self._slot_ids[:span] < num_new)  # (T, S)
            attend = causal[None, None].expand(len(rows), 1, -1, -1)  # (R, 1, T, S)
            picks = torch.zeros(len(rows), 1, dtype=torch.long, device=self.device)
            pending = None
            if self.reads_features:
                pending = (ragged_features(features, torch.zeros_like(ends), ends) if features is not None else
                           torch.zeros(len(rows), num_new, self._feature_size, device=self.device))
            out = self.decoder(ids, positions, slots, attend, picks, rows=buffer_rows, features=pending)
            hidden = out[1] if self.hidden_layers else None
            self.slot_mask[buffer_rows, :num_new] = slots < counts[:, None]
        self.size = max(self.size, num_new)
        self._shrink()
        return hidden if return_hidden else None

    def _shrink(self) -> None:
        """Move ``size`` back to just past the last slot any row still uses."""
        used = self.slot_mask[:, : self.size].any(dim=0).nonzero()
        self.size = int(used[-1]) + 1 if used.numel() else 0

    def _compact(self) -> None:
        """Move every row's real slots to the front, in order (rare: only when holes would overflow the buffer)."""
        order = torch.argsort((~self.slot_mask).to(torch.int8), dim=1, stable=True)  # (B, S_max): real first
        for k_cache, v_cache in self.decoder.caches():
            index = order[:, None, :, None].expand_as(k_cache)
            k_cache.copy_(k_cache.gather(2, index))
            v_cache.copy_(v_cache.gather(2, index))
        lengths = self.slot_mask.sum(dim=1)
        self.slot_mask = self._slot_ids[None, :] < lengths[:, None]
        self.size = int(lengths.max()) if lengths.numel() else 0


def compile_options(device: torch.device, compile) -> dict:
    """torch.compile arguments for a decode step on ``device``.

    CPU: inductor with frozen weights and max-autotune, which lets inductor pick its own C++ micro-GEMM for the
    small-row matmuls of a decode step (2.4x faster than ``F.linear`` at 1 row, 1.6x at 9, 1.2x at 17: see
    docs/small_row_matmul.py and the README). CUDA: CUDA graphs (``reduce-overhead``): a decode step is launch-bound.
    """
    if isinstance(compile, str):
        return {"backend": compile}
    if device.type == "cuda":
        return {"mode": "reduce-overhead"}
    # cpp_wrapper: the graph's kernel calls from C++, not a Python wrapper (~0.3 ms less per step).
    return {"inductor_config": {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                                "cpp_wrapper": True,
                                # no per-GEMM tables on the terminal
                                "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}}

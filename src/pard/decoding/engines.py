"""Engine paths: which :class:`~pard.decoding.lm.LanguageModel` implementation runs a model, and what ``auto`` picks.

* ``eager``     :class:`~pard.decoding.cache.CachedLM`, a ``DynamicCache`` (every model transformers runs);
* ``static``    :class:`~pard.decoding.static.StaticLM` run eagerly (preallocated, position-written cache);
* ``compiled``  the same with its decode steps compiled: inductor with frozen weights and its own small-row GEMMs
  on CPU, CUDA graphs on CUDA (Llama-style models; see :func:`~pard.decoding.static.supports_static_cache`);
* ``auto``      ``compiled`` on CPU when the model supports it, a C++ compiler is present and the run is long
  enough to pay back compilation (``COMPILE_PAYS_TOKENS``); ``eager`` otherwise (CUDA graphs were not yet
  measured against eager on a GPU, so CUDA stays eager until they are).

Static caches and their compiled steps live in an :class:`LMPool` owned by the decoder, so the next ``generate``
call of the same batch size reuses them instead of compiling again.
"""

from __future__ import annotations

import shutil

from transformers import PreTrainedModel

from ..errors import InvalidArgumentError
from .cache import CachedLM
from .lm import LanguageModel
from .static import StaticLM, round_up, supports_static_cache

ENGINES = ("auto", "eager", "static", "compiled")
COMPILE_PAYS_TOKENS = 4096  # below this many tokens to generate, compiling (~1-3 min on 2 CPU cores) costs more
CAPACITY_STEP = 512  # static caches grow in these steps, so prompts of similar lengths share compiled shapes


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidArgumentError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


def resolve_engine(engine: str, models: list[PreTrainedModel], expected_tokens: int | None) -> str:
    """The concrete path for ``engine`` (``auto`` resolved) given the models it must run.

    Raises InvalidArgumentError when ``static``/``compiled`` is asked of a model the static cache cannot run.
    """
    check_engine(engine)
    unsupported = [m.config.model_type for m in models if not supports_static_cache(m)]
    if engine in ("static", "compiled"):
        if unsupported:
            raise InvalidArgumentError(
                f"--engine {engine} runs Llama-style models only (not {', '.join(sorted(set(unsupported)))}); "
                "use --engine eager"
            )
        return engine
    if engine == "eager" or unsupported:
        return "eager"
    device = models[0].device
    if device.type != "cpu" or not has_cxx_compiler():
        return "eager"
    if expected_tokens is not None and expected_tokens < COMPILE_PAYS_TOKENS:
        return "eager"
    return "compiled"


def has_cxx_compiler() -> bool:
    """Inductor's CPU backend builds C++ kernels: without a compiler, compiled steps cannot run."""
    return any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))


class LMPool:
    """Opens the language model of each role (``"target"``, ``"draft"``) for one generation on one engine path.

    Static caches are kept per (role, batch size) and reset between generations; a generation that needs more
    slots than the kept cache has gets a bigger one (its compiled steps are compiled once more).
    """

    def __init__(self):
        self._static: dict[tuple[str, int], StaticLM] = {}
        self._retired_compile_seconds: dict[str, float] = {}  # of caches replaced by bigger ones, per role

    def open(
        self, engine: str, role: str, model: PreTrainedModel, batch_size: int, capacity: int, buckets: tuple[int, ...]
    ) -> LanguageModel:
        if engine == "eager":
            return CachedLM(model, batch_size)
        compile = engine == "compiled"
        lm = self._static.get((role, batch_size))
        fits = lm is not None and lm.capacity >= capacity + max(buckets) and lm.compiled == compile
        if not fits or lm.buckets != tuple(sorted(set(buckets))):
            if lm is not None:
                self._retired_compile_seconds[role] = self._retired_compile_seconds.get(role, 0.0) + lm.compile_seconds
            capacity = round_up(capacity + max(buckets), CAPACITY_STEP)  # + one pass, padded
            lm = StaticLM(model, batch_size, capacity, buckets, compile=compile)
            self._static[(role, batch_size)] = lm
        else:
            lm.reset()
        return lm

    def compile_seconds(self, role: str | None = None) -> float:
        """Seconds spent compiling so far by the kept static caches (of ``role`` only, when given)."""
        live = sum(lm.compile_seconds for (r, _), lm in self._static.items() if role in (None, r))
        return live + sum(t for r, t in self._retired_compile_seconds.items() if role in (None, r))

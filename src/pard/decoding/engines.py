"""Engine paths: which :class:`~pard.decoding.lm.LanguageModel` implementation runs a model, and what ``auto`` picks.

* ``eager``     :class:`~pard.decoding.cache.CachedLM`, a ``DynamicCache`` (every model transformers runs);
* ``static``    :class:`~pard.decoding.static.StaticLM` run eagerly (preallocated, position-written cache);
* ``compiled``  the same with its decode steps compiled: inductor with frozen weights and its own small-row GEMMs
  on CPU, CUDA graphs on CUDA (Llama-style models; see :func:`~pard.decoding.static.supports_static_cache`);
* ``auto``      ``compiled`` on CPU when the model supports it, a C++ compiler is present and the run is long
  enough to pay back compilation (``COMPILE_PAYS_TOKENS``); for shorter runs ``static`` where the small-row
  kernel runs (float32 on a CPU that built it: a one-off ``pard generate`` or ``pard demo`` gets memory-bound
  passes without compiling); ``eager`` otherwise (CUDA graphs were not yet measured against eager on a GPU, so
  CUDA stays eager until they are).

The static paths multiply through the small-row kernel (:mod:`pard.kernels`) unless ``matmul="library"``.

Static caches and their compiled steps are kept with the model (:func:`open_lm`), so the next ``generate`` call of
the same batch size -- of this decoder or of any other over the same model -- reuses them instead of compiling
again.
"""

from __future__ import annotations

import shutil
import weakref

from transformers import PreTrainedModel

from ..errors import InvalidArgumentError
from ..kernels import check_matmul, use_kernel
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


def resolve_engine(engine: str, models: list[PreTrainedModel], expected_tokens: int | None,
                   matmul: str = "auto") -> str:
    """The concrete path for ``engine`` (``auto`` resolved) given the models it must run and the ``matmul``
    asked for.

    Raises InvalidArgumentError when ``static``/``compiled`` is asked of a model the static cache cannot run, and
    when ``matmul="kernel"`` is asked of the eager path (the kernel runs in the static decoder).
    """
    check_engine(engine)
    resolved = _resolve_engine(engine, models, expected_tokens, matmul)
    if resolved == "eager" and check_matmul(matmul) == "kernel":
        raise InvalidArgumentError("--matmul kernel runs on the static and compiled paths (--engine static, "
                                   "compiled or auto), not on the eager one")
    return resolved


def _resolve_engine(engine: str, models: list[PreTrainedModel], expected_tokens: int | None, matmul: str) -> str:
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
        weights = [m.get_input_embeddings().weight for m in models]
        return "static" if all(use_kernel(matmul, w) for w in weights) else "eager"
    return "compiled"


def has_cxx_compiler() -> bool:
    """Inductor's CPU backend builds C++ kernels: without a compiler, compiled steps cannot run."""
    return any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))


# A model's static caches, kept for as long as the model lives (a StaticLM holds its submodules, not the model, so
# the entry goes when the model does); the model object itself is left untouched (copies and pickles stay clean).
_STATIC_LMS: weakref.WeakKeyDictionary[PreTrainedModel, dict[tuple, StaticLM]] = (
    weakref.WeakKeyDictionary()
)


def open_lm(
    engine: str, role: str, model: PreTrainedModel, batch_size: int, capacity: int, buckets: tuple[int, ...],
    matmul: str = "auto", hidden_layers: tuple[int, ...] = (), reads_features: bool = False,
) -> LanguageModel:
    """The language model of ``role`` (``"target"``, ``"draft"``) for one generation on one engine path.

    ``eager`` opens a fresh :class:`CachedLM`. The static paths keep one :class:`StaticLM` per (role, batch size,
    compiled, small-row kernel or not) for as long as the model lives, so every decoder over the same model -- a
    benchmark's methods and K values, a user trying settings in a notebook -- reuses its buffers and compiled
    steps: a pass width met before never compiles again, a new one (``buckets`` it lacks) compiles once, and only a
    generation needing more slots than the kept cache has gets a bigger one (compiled anew). One model's static
    caches serve one generation at a time. ``matmul`` (``auto``, ``kernel``, ``library``): see
    :func:`pard.kernels.use_kernel`. ``hidden_layers``: a target's passes can return these layers' hidden states;
    ``reads_features``: a feature draft's passes read the target's (:mod:`pard.target_features`).
    """
    if engine == "eager":
        return CachedLM(model, batch_size, hidden_layers, reads_features)
    compiled = engine == "compiled"
    small_rows = use_kernel(matmul, model.get_input_embeddings().weight)
    kept = _STATIC_LMS.setdefault(model, {})
    key = (role, batch_size, compiled, small_rows, tuple(hidden_layers), reads_features)
    lm = kept.get(key)
    if lm is None or lm.capacity < capacity + max(buckets):
        capacity = round_up(capacity + max(buckets), CAPACITY_STEP)  # + one pass, padded
        lm = kept[key] = StaticLM(model, batch_size, capacity, buckets, compile=compiled, small_rows=small_rows,
                                  hidden_layers=tuple(hidden_layers), reads_features=reads_features)
    else:
        lm.reset()
        lm.add_buckets(buckets)
    return lm


def kept_static_lms(model: PreTrainedModel) -> dict[tuple, StaticLM]:
    """The static caches kept for ``model``, by (role, batch size, compiled, small-row kernel, hidden layers, reads
    features)."""
    return dict(_STATIC_LMS.get(model, {}))

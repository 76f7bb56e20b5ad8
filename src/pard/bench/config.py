"""What a benchmark run measures (:class:`BenchConfig`) and the methods it knows. Light on purpose: building the
command line imports this module, not the engine or torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidArgumentError

# pard-plain: a PARD draft without the target's hidden states (a feature draft run target-independently; for a
# plain draft the same as pard)
ENGINE_METHODS = ("ar", "vsd", "pard", "pard-plain")
HF_METHODS = ("hf-ar", "hf-assisted", "hf-prompt-lookup")
# llama.cpp's own AR on a GGUF target (the llama-cpp-python package): a CPU user's alternative
PEER_METHODS = ("llama-cpp",)
ARITHMETIC_PEERS = {"llama-cpp"}  # peers whose arithmetic differs by design (quantized): outputs not compared
ALL_METHODS = ENGINE_METHODS + HF_METHODS + PEER_METHODS
PARD_METHODS = ("pard", "pard-plain")
USES_K = {"vsd", "pard", "pard-plain", "hf-assisted", "hf-prompt-lookup"}
BATCHED = {"ar", "vsd", "pard", "pard-plain", "hf-ar"}  # transformers' assisted/prompt-lookup decoding: batch 1
DRAFT_SEPARATOR = " · "  # "pard · zoo:pard-features": a PARD method with one of several drafts


def base_method(method: str) -> str:
    """The method of a configuration's name ("pard · zoo:pard" -> "pard")."""
    return method.partition(DRAFT_SEPARATOR)[0]


@dataclass
class BenchConfig:
    targets: list[str] = field(default_factory=lambda: ["zoo:large"])
    draft: str | list[str] | None = "zoo:pard"  # the parallel draft(s) (methods pard, pard-plain), side by side
    ar_draft: str | None = "zoo:draft"  # the autoregressive draft (vsd, hf-assisted)
    methods: list[str] = field(default_factory=lambda: [m for m in ALL_METHODS if m not in ("pard-plain",
                                                                                          "llama-cpp")])
    datasets: list[str] = field(default_factory=lambda: ["humaneval"])
    ks: list[int | str] = field(default_factory=lambda: [8])  # "auto": k chosen per step, up to max_k
    engines: list[str] = field(default_factory=lambda: ["auto"])  # engine paths of ar/vsd/pard, side by side
    matmuls: list[str] = field(default_factory=lambda: ["auto"])  # the static paths' matmuls, side by side
    max_k: int = 8
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    num_prompts: int = 10
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    chat_template: bool = True
    prompt_field: str | None = None
    output: str = "bench-results/latest"

    def pard_drafts(self) -> list[str]:
        """The PARD drafts measured (several: each one's configurations are named "pard · DRAFT")."""
        if not self.draft:
            return []
        return [self.draft] if isinstance(self.draft, str) else list(dict.fromkeys(self.draft))

    def engine_variants(self) -> list[str]:
        """Each engine path with each matmul, as ``path`` (``--matmul auto``) or ``path/matmul``; the eager path
        has only its own (the model's forward)."""
        variants = []
        for engine in self.engines:
            for matmul in (self.matmuls if engine != "eager" else ["auto"]):
                variants.append(engine if matmul == "auto" else f"{engine}/{matmul}")
        return list(dict.fromkeys(variants))

    def validate(self) -> None:
        unknown = set(self.methods) - set(ALL_METHODS)
        if unknown:
            raise InvalidArgumentError(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(ALL_METHODS)}")
        if set(PARD_METHODS) & set(self.methods) and not self.pard_drafts():
            raise InvalidArgumentError("methods pard / pard-plain need --draft")
        if {"vsd", "hf-assisted"} & set(self.methods) and not self.ar_draft:
            raise InvalidArgumentError("methods vsd / hf-assisted need --ar-draft")
        if not self.ks or not self.batch_sizes or not self.targets or not self.datasets:
            raise InvalidArgumentError("give at least one target, dataset, K and batch size")
        from ..decoding.engines import check_engine

        for engine in self.engines or ["(none)"]:
            check_engine(engine)
        from ..kernels import check_matmul

        for matmul in self.matmuls or ["(none)"]:
            check_matmul(matmul)
        if any(k != "auto" and (not isinstance(k, int) or k < 1) for k in self.ks) or self.max_k < 1:
            raise InvalidArgumentError("each K must be an integer >= 1 or 'auto', and --max-k >= 1")
        from ..decoding.engine import check_draft_length

        for k in self.ks:
            check_draft_length(k, self.max_k)
        if min(self.batch_sizes) < 1 or self.repeats < 1 or self.num_prompts < 1:
            raise InvalidArgumentError("K, batch sizes, repeats and --num-prompts must be >= 1")
        if self.max_new_tokens < 1 or self.warmup < 0:
            raise InvalidArgumentError("--max-new-tokens must be >= 1 and --warmup >= 0")
        from ..decoding.sampling import SamplingConfig

        SamplingConfig(self.temperature, self.top_k, self.top_p)  # raises on a bad temperature / top-k / top-p
        if "llama-cpp" in self.methods:
            self._check_llama_cpp()

    def _check_llama_cpp(self) -> None:
        """llama.cpp runs GGUF targets greedily, one prompt at a time (when llama-cpp-python is installed: else the
        run leaves it out, see :func:`pard.bench.runner.run_bench`)."""
        from .runner import gguf_source

        not_gguf = [t for t in self.targets if gguf_source(t) is None]
        if not_gguf:
            raise InvalidArgumentError(f"method llama-cpp runs GGUF targets (zoo:smollm2, a .gguf file); not "
                                       f"{', '.join(not_gguf)}")
        if self.temperature != 0:
            raise InvalidArgumentError("method llama-cpp is measured greedy (--temperature 0)")

"""What a benchmark run measures (:class:`BenchConfig`) and the methods it knows. Light on purpose: building the
command line imports this module, not the engine or torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidArgumentError

ENGINE_METHODS = ("ar", "vsd", "pard")
HF_METHODS = ("hf-ar", "hf-assisted", "hf-prompt-lookup")
ALL_METHODS = ENGINE_METHODS + HF_METHODS
USES_K = {"vsd", "pard", "hf-assisted", "hf-prompt-lookup"}
BATCHED = {"ar", "vsd", "pard", "hf-ar"}  # transformers' assisted/prompt-lookup decoding is batch-1 only


@dataclass
class BenchConfig:
    targets: list[str] = field(default_factory=lambda: ["zoo:large"])
    draft: str | None = "zoo:pard"  # the parallel draft (method pard)
    ar_draft: str | None = "zoo:draft"  # the autoregressive draft (vsd, hf-assisted)
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
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
        if "pard" in self.methods and not self.draft:
            raise InvalidArgumentError("method pard needs --draft")
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

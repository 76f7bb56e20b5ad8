"""`pard bench-latency`: how a forward pass's time grows with the number of tokens it reads, T(n), n = 1..N.

Speculative decoding wins only when verifying k + 1 tokens costs about as much as decoding one: T(k+1) / T(1) is
the number to watch (on a GPU it stays near 1 up to large n; on a CPU small-row matrix products are far from the
memory bound and it grows). Each model reads a ``context``-token prompt through the same ragged KV cache the
engine uses, then every n is timed as the engine runs it: append n tokens, compute logits, roll back. Medians of
``repeats`` after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..decoding.engines import open_lm
from ..errors import InvalidArgumentError
from ..files import atomic_write_text
from ..kernels import check_matmul
from ..models import load_config, load_model
from .report import machine_info, markdown_table, plot_or_note, save_figure, write_json
from .runner import busy_machine_check


@dataclass
class LatencyConfig:
    models: list[str]
    max_tokens: int = 17
    context: int = 200
    repeats: int = 5
    batch_size: int = 1
    dtype: str = "auto"
    device: str = "auto"
    engine: str = "eager"  # eager (dynamic cache), static, or compiled (each n is one compiled shape)
    matmuls: list[str] = field(default_factory=lambda: ["auto"])  # static/compiled: kernel, library, auto
    output: str = "bench-results/latency"
    seed: int = 0
    tokens: list[int] = field(default_factory=list)  # the n to time (default 1..max_tokens)


WARMUP_PASSES = 3  # per model and n: the first compiles the shape; the next ones settle caches and thread pools


def forward_ms(model, lms: dict, n: int, config: LatencyConfig, generator: torch.Generator) -> dict[str, float]:
    """Median milliseconds of one n-token pass over a ``context``-token cache (B = batch_size), per LM in ``lms``,
    timed in turns (one pass of each per round), so a slow phase of the machine hits them all alike."""
    vocab = model.config.vocab_size
    bases = {}
    for name, lm in lms.items():
        lm.rollback(torch.zeros(config.batch_size, dtype=torch.long))
        lm.forward(torch.randint(0, vocab, (config.batch_size, config.context), generator=generator),
                   logits_to_keep=1)
        bases[name] = lm.lengths.clone()
    times = {name: [] for name in lms}
    for round_ in range(WARMUP_PASSES + config.repeats):
        for name, lm in lms.items():
            ids = torch.randint(0, vocab, (config.batch_size, n), generator=generator)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            lm.forward(ids)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            if round_ >= WARMUP_PASSES:
                times[name].append((time.perf_counter() - start) * 1000)
            lm.rollback(bases[name])
    return {name: statistics.median(t) for name, t in times.items()}


def run_latency(config: LatencyConfig) -> dict:
    """Time every model at n = 1..max_tokens; write summary.json, results.md and latency.png to ``output``."""
    if config.engine not in ("eager", "static", "compiled"):
        raise InvalidArgumentError(f"unknown engine {config.engine!r}; choose one of eager, static, compiled")
    for matmul in config.matmuls:
        check_matmul(matmul)
    matmuls = config.matmuls if config.engine != "eager" else ["auto"]  # the eager path is the model's forward
    config.tokens = sorted(set(config.tokens)) or list(range(1, config.max_tokens + 1))
    config.max_tokens = max(config.tokens)
    for spec in config.models:  # a pass beyond the positions a model was trained for times nothing it can do
        window = getattr(load_config(spec).get_text_config(), "max_position_embeddings", None)
        if window is not None and config.context + config.max_tokens > window:
            raise InvalidArgumentError(f"{spec}: --context {config.context} + {config.max_tokens} tokens exceeds its "
                                       f"context window of {window} positions")
    load = busy_machine_check()
    generator = torch.Generator().manual_seed(config.seed)
    results = {}
    for spec in config.models:
        model = load_model(spec, dtype=config.dtype, device=config.device)
        # The engine's own caches (a static one with one compiled shape per n), made for a context + n tokens; with
        # several matmuls, one per matmul, timed in turns at each n (a slow phase of the machine hits all alike).
        lms = {matmul: open_lm(config.engine, "target", model, config.batch_size, config.context,
                               tuple(config.tokens), matmul) for matmul in matmuls}
        ms = {matmul: [] for matmul in matmuls}
        for n in config.tokens:
            for matmul, t in forward_ms(model, lms, n, config, generator).items():
                ms[matmul].append(t)
        for matmul, lm in lms.items():
            label = spec if config.engine == "eager" else f"{spec} [{_matmul_label(lm)}]"
            results[label] = {"ms": [round(t, 3) for t in ms[matmul]],
                              "ratio": [round(t / ms[matmul][0], 3) for t in ms[matmul]],
                              "compile_seconds": round(lm.compile_seconds, 1), "matmul": _matmul_label(lm),
                              "packed_bytes": getattr(lm, "packed_bytes", 0)}
        del model, lms
    summary = {"config": asdict(config), "machine": machine_info(), "load_average": load, "results": results}
    out = Path(config.output)
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "results.md", latency_markdown(summary))
    written = plot_or_note(latency_plot, summary, out / "latency.png")
    return {**summary, "plots": [written.name] if written else []}


def _matmul_label(lm) -> str:
    if not getattr(lm, "small_rows", False):
        return "library"
    from ..kernels import kernel_isa

    return f"kernel {kernel_isa()}"


def latency_markdown(summary: dict) -> str:
    config, results = summary["config"], summary["results"]
    tokens = config["tokens"]
    shown = [i for i, n in enumerate(tokens) if n in (1, 2, 3, 5, 9, 17) or i == len(tokens) - 1 or len(tokens) < 8]
    rows = [[spec, *(f"{r['ms'][i]:.1f} ({r['ratio'][i]:.2f}x)" for i in shown)] for spec, r in results.items()]
    compiled = ", ".join(f"{spec} {r['compile_seconds']:.0f} s" for spec, r in results.items()
                         if r.get("compile_seconds"))
    packed = ", ".join(f"{spec} {r['packed_bytes'] / 1e6:.0f} MB" for spec, r in results.items()
                       if r.get("packed_bytes"))
    return (markdown_table(["model", *(f"n={tokens[i]}" for i in shown)], rows)
            + f"\n\nms per forward of n tokens after a {config['context']}-token context (T(n)/T(1) in brackets), "
            f"batch {config['batch_size']}, median of {config['repeats']}, engine {config.get('engine', 'eager')}"
            + (f" (compiling, not counted: {compiled})" if compiled else "")
            + (f"; the kernel's packed copy of the weights: {packed}" if packed else "")
            + f"; {summary['machine']['cpu_cores']} CPU cores ({summary['machine']['torch_threads']} torch "
            "threads).\n")


def latency_plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for spec, r in summary["results"].items():
        left.plot(summary["config"]["tokens"], r["ms"], "-o", markersize=3, label=spec)
        right.plot(summary["config"]["tokens"], r["ratio"], "-o", markersize=3, label=spec)
    left.set(xlabel="tokens per pass n", ylabel="ms per pass", title="T(n)")
    right.set(xlabel="tokens per pass n", ylabel="T(n) / T(1)", title="relative cost of a multi-token pass")
    right.axhline(1.0, color="grey", linewidth=0.5)
    left.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path

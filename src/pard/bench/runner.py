"""`pard bench`: methods x targets x K x batch size x datasets, side by side in one run.

Methods: our engine's ``ar``, ``vsd`` and ``pard``, and transformers' own ``generate`` as peers: plain greedy
(``hf-ar``), assisted generation with the same AR draft (``hf-assisted``) and prompt lookup
(``hf-prompt-lookup``). The configurations of one (target, dataset, batch size) cell are timed side by side:
every one first runs ``warmup`` untimed rounds of generations (a batch of each batch size, the longest prompts
first, so compiled steps and static caches are built for the whole cell before anything is timed), then the cell
runs ``repeats`` rounds, each timing one pass over all prompts of every configuration in turn. A slow phase of the
machine (another process, a frequency change) then hits every configuration of a round alike instead of one
configuration's repeats. The reported tokens/s is the median over rounds, and speedups divide by ``ar`` on the
same target, dataset and batch size from the same run. Greedy runs compare every output with ``ar``'s.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..decoding import SamplingConfig, SpeculativeDecoder
from ..decoding.stats import GenerationStats
from ..files import atomic_write_text, check_output_dir
from ..models import load_model, load_tokenizer
from ..prompts import encode_prompt, eos_token_ids
from ..vocab import check_compatible
from .config import (
    ARITHMETIC_PEERS,
    BATCHED,
    DRAFT_SEPARATOR,
    ENGINE_METHODS,
    PARD_METHODS,
    USES_K,
    BenchConfig,
    base_method,
)
from .datasets import load_prompts
from .report import machine_info, write_json


@dataclass
class Measurement:
    """One configuration, all prompts: the medians and acceptance statistics."""

    target: str
    dataset: str
    method: str
    k: int | str | None  # "auto": chosen per step
    batch_size: int
    tokens: int
    tokens_per_second: float
    seconds: list[float]
    mean_accepted_length: float | None = None
    acceptance_per_position: list[float] | None = None
    draft_seconds: float | None = None
    verify_seconds: float | None = None
    mismatches: int | None = None  # greedy: outputs differing from ar's (must be 0)
    speculative_fraction: float | None = None  # share of steps that verified draft tokens (< 1 with -k auto)
    chosen_k: list[int] | None = None  # -k auto: the k of every step of the first prompt's generation
    engine: str | None = None  # ar/vsd/pard: the engine path asked for (see pard.decoding.engines)
    engine_path: str | None = None  # the path it resolved to ("auto" -> "compiled" or "eager")
    compile_seconds: float | None = None  # compiling new shapes, excluded from seconds and tokens/s
    speedup: float | None = None  # over ar on the same engine (hf-*: over ar on the first engine)


def run_bench(config: BenchConfig) -> dict:
    """Run every configuration; write generations.jsonl and summary.json under ``config.output``.

    Everything that can fail on bad input (settings, datasets, models, the pairs' vocabularies) fails before the
    output directory is touched, and results are written atomically at the end: a failed run leaves the previous
    run's files as they were.
    """
    config.validate()
    out_dir = Path(config.output)
    check_output_dir(out_dir, overwrite=True, what="--output")  # a file there, or no write permission: say so now
    sampling = SamplingConfig(config.temperature, config.top_k, config.top_p)
    prompt_sets = {d: load_prompts(d, limit=config.num_prompts, prompt_field=config.prompt_field)
                   for d in config.datasets}
    # The drafts by spec (an AR draft for vsd / hf-assisted under "ar"), loaded once for every target.
    pard_specs = config.pard_drafts() if set(PARD_METHODS) & set(config.methods) else []
    drafts = {spec: _load(spec, config) for spec in pard_specs}
    drafts["ar"] = _load(config.ar_draft, config) if {"vsd", "hf-assisted"} & set(config.methods) else None
    draft_tokenizers = {kind: load_tokenizer(config.ar_draft if kind == "ar" else kind)
                        for kind, draft in drafts.items() if draft is not None}
    tokenizers = {spec: load_tokenizer(spec) for spec in config.targets}  # a missing target fails here, not later
    load = {"start": busy_machine_check()}  # after every check of the arguments: a refusal stays one line
    # ar first: it is every speedup's denominator and every greedy output's reference.
    methods = ["ar"] + [m for m in config.methods if m != "ar"]
    if "llama-cpp" in methods and importlib.util.find_spec("llama_cpp") is None:
        methods.remove("llama-cpp")
        print("pard: llama-cpp left out: it needs llama-cpp-python (pip install llama-cpp-python; it builds "
              "llama.cpp from source: a C++ compiler and a few minutes)", file=sys.stderr)
    elif "llama-cpp" in methods and (crash := llama_cpp_crash(gguf_source(config.targets[0]))) is not None:
        methods.remove("llama-cpp")
        print(f"pard: llama-cpp left out: llama.cpp {crash} on this CPU when it tried two tokens (on CPUs with "
              "AMX, build llama-cpp-python without it: README, *The CPU user's alternative*)", file=sys.stderr)
    plan = _plan(config, methods)
    measurements: list[Measurement] = []
    log: list[str] = []
    total = len(plan) * len(config.targets) * len(config.datasets) * len(config.batch_sizes)
    bar = tqdm(total=total, desc="bench", unit="config")
    truncated = {}
    for target_spec in config.targets:
        target = _load(target_spec, config)
        tokenizer = tokenizers[target_spec]
        for kind, draft in drafts.items():  # the same check as everywhere a pair meets: tokenizers decide
            if draft is not None:
                check_compatible(target, draft, tokenizer, draft_tokenizers[kind])
        eos = eos_token_ids(tokenizer, target)
        for dataset, prompts in prompt_sets.items():
            ids = [encode_prompt(tokenizer, p.text, chat_template=config.chat_template) for p in prompts]
            ids, truncated[f"{target_spec} {dataset}"] = _fit_context(ids, target, config.max_new_tokens)
            for batch_size in config.batch_sizes:
                batches = [list(range(i, min(i + batch_size, len(ids)))) for i in range(0, len(ids), batch_size)]
                cell = [(method, k, engine) for method, k, engine in plan
                        if batch_size == 1 or base_method(method) in BATCHED]
                bar.update(len(plan) - len(cell))
                runs = []
                for method, k, engine in cell:
                    bar.set_postfix_str(f"{target_spec} {dataset} B={batch_size} {method} K={k} {engine or ''}: warmup")
                    run = _runner(method, k, engine, target, tokenizer, drafts, draft_tokenizers, sampling, eos,
                                  config, expected_tokens=len(ids) * config.max_new_tokens)
                    _warm_up(run, ids, batches, config)
                    runs.append(run)
                passes: list[list[TimedPass]] = [[] for _ in cell]
                for repeat in range(config.repeats):  # rounds: every configuration once, side by side
                    bar.set_postfix_str(f"{target_spec} {dataset} B={batch_size}: round {repeat + 1}/{config.repeats}")
                    for i, run in enumerate(runs):
                        passes[i].append(_timed_pass(run, ids, batches, config.seed + repeat))
                reference = None
                for (method, k, engine), timed in zip(cell, passes):
                    m, outputs = _measurement(timed)
                    m.target, m.dataset, m.method, m.k, m.batch_size = target_spec, dataset, method, k, batch_size
                    m.engine = engine
                    if reference is None and method == "ar":
                        reference = outputs
                    elif sampling.greedy and method not in ARITHMETIC_PEERS:
                        m.mismatches = sum(a != b for a, b in zip(outputs, reference))
                    measurements.append(m)
                    for i, out in enumerate(outputs):
                        log.append(_json_line(m, prompts[i].id, out, reference[i] if reference else None))
                    bar.update()
        del target
    bar.close()
    load["end"] = busy_machine_check()
    _add_speedups(measurements)
    summary = {
        "config": asdict(config),
        "machine": machine_info(),
        "load_average": load,  # 1-minute load when the run started and ended (above the core count: busy)
        "truncated_prompts": {key: n for key, n in truncated.items() if n},
        "measurements": [asdict(m) for m in measurements],
    }
    atomic_write_text(out_dir / "generations.jsonl", "".join(log))
    write_json(out_dir / "summary.json", summary)
    return summary


def _fit_context(ids: list[list[int]], model, max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Keep the last tokens of prompts too long to leave room for max_new_tokens (code benchmarks complete the
    end of a file, so its end matters most); return the prompts and how many were cut."""
    from ..models import context_window

    window = context_window(model)
    if window is None:
        return ids, 0
    room = max(window - max_new_tokens, 1)
    return [p[-room:] for p in ids], sum(len(p) > room for p in ids)


def busy_machine_check() -> float | None:
    """The 1-minute load average; warns on stderr when it exceeds the core count. Another process on the same
    cores makes timings noisy, and OpenMP spin-waiting made some shapes 10-40x slower when two jobs shared 2 cores."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(f"pard bench: warning: the machine is busy (load average {load:.1f} on {cores} cores); timings will "
              "be slow and noisy — stop other jobs for numbers worth reporting", file=sys.stderr)
    return round(load, 2)


def _plan(config: BenchConfig, methods: list[str]) -> list[tuple[str, int | None, str | None]]:
    """(method, K, engine) in run order: every engine's ar before anything else (the speedups' denominators)."""
    plan = []
    drafts = config.pard_drafts()
    for method in methods:
        # several PARD drafts: one configuration name per draft ("pard · zoo:pard-features")
        names = [f"{method}{DRAFT_SEPARATOR}{d}" for d in drafts] if method in PARD_METHODS and len(drafts) > 1 \
            else [method]
        for name in names:
            for engine in config.engine_variants() if method in ENGINE_METHODS else [None]:
                for k in config.ks if method in USES_K else [None]:
                    plan.append((name, k, engine))
    return plan


def _load(spec: str, config: BenchConfig):
    model = load_model(spec, dtype=config.dtype, device=config.device)
    model.pard_spec = spec  # what the llama.cpp peer reads
    return model


def _runner(method, k, engine, target, tokenizer, drafts, draft_tokenizers, sampling, eos, config,
            expected_tokens: int):
    """A function batch-of-token-lists -> (outputs, GenerationStats | None)."""
    base, _, spec = method.partition(DRAFT_SEPARATOR)
    if base in ENGINE_METHODS:
        kind = {"ar": None, "vsd": "ar"}.get(base, spec or (config.pard_drafts() or [None])[0])
        path, _, matmul = engine.partition("/")  # "static/library": the static path with the library GEMM
        decoder = SpeculativeDecoder(target, drafts.get(kind), method="pard" if base in PARD_METHODS else base,
                                     num_draft_tokens=k or 1, max_draft_tokens=config.max_k, engine=path,
                                     matmul=matmul or "auto",
                                     expected_tokens=expected_tokens * (config.repeats + config.warmup),
                                     target_tokenizer=tokenizer, draft_tokenizer=draft_tokenizers.get(kind),
                                     target_features=base != "pard-plain")

        def run(batch, seed):
            out = decoder.generate(batch, max_new_tokens=config.max_new_tokens, sampling=sampling,
                                   eos_token_id=eos, seed=seed)
            return out.sequences, out.stats

        return run

    if base == "llama-cpp":
        return _llama_cpp_runner(target_spec_of(target), eos, sampling, config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    kwargs = {"max_new_tokens": config.max_new_tokens, "pad_token_id": pad, "eos_token_id": sorted(eos) or None,
              "use_cache": True}  # a checkpoint saved by a Trainer may say use_cache=false: peers get a KV cache too
    if sampling.greedy:
        kwargs["do_sample"] = False
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k or 0,
                      top_p=sampling.top_p or 1.0)
    if method == "hf-assisted" and k == "auto":
        # transformers' own adaptive drafting (its heuristic schedule and confidence threshold, up to K_max): the
        # baseline `-k auto` for vsd is measured against.
        kwargs.update(assistant_model=drafts["ar"], num_assistant_tokens=config.max_k,
                      num_assistant_tokens_schedule="heuristic", assistant_confidence_threshold=0.4)
    elif method == "hf-assisted":
        # Same draft and K as vsd, constant schedule: the side-by-side comparison of the verification loop.
        kwargs.update(assistant_model=drafts["ar"], num_assistant_tokens=k,
                      num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
    elif method == "hf-prompt-lookup":
        kwargs.update(prompt_lookup_num_tokens=config.max_k if k == "auto" else k)

    def run(batch, seed):
        torch.manual_seed(seed)
        width = max(map(len, batch))
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(batch):  # left padding, as transformers' generate expects
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        with torch.inference_mode():
            out = target.generate(input_ids.to(target.device), attention_mask=mask.to(target.device), **kwargs)
        sequences = []
        for row in out[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            sequences.append(row[:cut])
        return sequences, None

    return run


def target_spec_of(model) -> str:
    """The spec a target was loaded from (``_load`` records it): the llama.cpp peer reads its GGUF file."""
    return model.pard_spec


def gguf_source(spec: str) -> Path | None:
    """The GGUF file behind a target spec (``zoo:smollm2``, a ``.gguf`` file or a directory holding one), else None."""
    from ..gguf import gguf_file_of
    from ..zoo import PACKAGED, zoo_path

    scheme, _, name = spec.partition(":")
    if scheme == "zoo":
        return zoo_path(name) if name in PACKAGED else None
    return gguf_file_of(spec)


# Two greedy tokens of the GGUF file in a child process: llama.cpp's AMX backend can die of a general protection
# fault at the first token (seen on Sapphire Rapids VMs), which in this process would end the whole bench.
LLAMA_CPP_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False)
for i, _ in zip(range(2), llm.generate(llm.tokenize(b"def f():"), top_k=1, temp=0.0)):
    pass
"""


def llama_cpp_crash(gguf: Path) -> str | None:
    """None when llama.cpp decodes ``gguf`` in a child process; else how it ended ("was killed by signal 11")."""
    import signal
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", LLAMA_CPP_PROBE, str(gguf)], capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "did not finish in 5 minutes"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"was killed by {signal.Signals(-done.returncode).name}"
    last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
    return f"failed (exit code {done.returncode}: {last})"


def _llama_cpp_runner(spec: str, eos: set[int], sampling: SamplingConfig, config: BenchConfig):
    """llama.cpp's own greedy decoding of the target's GGUF file (its quantized arithmetic, its threads = ours):
    what a CPU user holding the file would run instead. Batch 1; its outputs differ from the fp32 model's by
    design (quantized weights in the matmuls), so they are not counted as mismatches."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_source(spec)), n_ctx=4096, n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(), verbose=False, seed=config.seed)

    def run(batch, seed):
        sequences = []
        for prompt in batch:
            tokens = []
            for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
                tokens.append(token)
                if token in eos or len(tokens) == config.max_new_tokens:
                    break
            sequences.append(tokens)
        return sequences, None

    return run


@dataclass
class TimedPass:
    """One pass over all prompts of one configuration: its seconds (compilation excluded) and what it produced."""

    seconds: float
    outputs: list[list[int]]
    stats: list[GenerationStats]  # of each batch (engine methods; their compile_seconds), [] for transformers'


def _warm_up(run, ids, batches, config: BenchConfig) -> None:
    """``config.warmup`` untimed rounds, each generating one batch of every batch size the cell has (a ragged last
    batch is a shape of its own: compiled steps and static caches are kept per batch size), the longest prompts
    first: every pass width compiles, and every static cache gets the capacity the cell needs, before any pass is
    timed."""
    by_size: dict[int, list[list[int]]] = {}
    for batch in sorted(batches, key=lambda batch: -max(len(ids[i]) for i in batch)):
        by_size.setdefault(len(batch), []).append(batch)
    for w in range(config.warmup):
        for same_size in by_size.values():
            run([ids[i] for i in same_size[w % len(same_size)]], config.seed)


def _timed_pass(run, ids, batches, seed: int) -> TimedPass:
    seconds, stats_of_pass = 0.0, []
    outputs: list[list[int]] = [[] for _ in ids]
    for batch in batches:
        start = time.perf_counter()
        sequences, stats = run([ids[i] for i in batch], seed)
        seconds += time.perf_counter() - start
        for i, seq in zip(batch, sequences):
            outputs[i] = seq
        if stats is not None:
            stats_of_pass.append(stats)
            seconds -= stats.compile_seconds  # a shape the warm-up did not meet (a prompt length) compiled now
    return TimedPass(seconds, outputs, stats_of_pass)


def _measurement(passes: list[TimedPass]) -> tuple[Measurement, list[list[int]]]:
    """The median tokens/s over a configuration's timed passes; acceptance statistics from its last pass."""
    last = passes[-1]
    tokens = sum(map(len, last.outputs))
    seconds = [p.seconds for p in passes]
    m = Measurement("", "", "", None, 0, tokens=tokens, tokens_per_second=tokens / statistics.median(seconds),
                    seconds=seconds)
    if last.stats:
        merged = last.stats[0].merged(last.stats[1:])
        m.mean_accepted_length = merged.mean_accepted_length
        m.acceptance_per_position = merged.acceptance_per_position
        m.draft_seconds, m.verify_seconds = merged.draft_seconds, merged.verify_seconds
        m.speculative_fraction = merged.speculative_steps / max(merged.target_forwards, 1)
        if merged.adaptive:
            m.chosen_k = merged.drafted_lengths[0]
        m.engine_path, m.compile_seconds = merged.engine, sum(s.compile_seconds for p in passes for s in p.stats)
    return m, last.outputs


def _add_speedups(measurements: list[Measurement]) -> None:
    """Speedup over ar on the same engine path; transformers' methods over the first engine's ar."""
    base = {}
    for m in measurements:
        if m.method == "ar":
            base.setdefault((m.target, m.dataset, m.batch_size, None), m.tokens_per_second)
            base[(m.target, m.dataset, m.batch_size, m.engine)] = m.tokens_per_second
    for m in measurements:
        m.speedup = m.tokens_per_second / base[(m.target, m.dataset, m.batch_size, m.engine)]


def _json_line(m: Measurement, prompt_id: str, output: list[int], reference: list[int] | None) -> str:
    import json

    return json.dumps({
        "target": m.target, "dataset": m.dataset, "method": m.method, "k": m.k, "batch_size": m.batch_size,
        "engine": m.engine,
        "prompt_id": prompt_id, "tokens": len(output), "matches_ar": None if reference is None else output == reference,
        "output_ids": output,
    }) + "\n"

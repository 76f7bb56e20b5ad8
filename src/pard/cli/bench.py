"""Measuring: `pard bench` (methods x targets x K x batch x datasets), `pard bench-align`, `pard demo`."""

from __future__ import annotations

import json
import sys

from .options import (
    add_draft_length_options,
    add_engine_option,
    add_model_options,
    add_sampling_options,
    draft_length,
)


def register(sub) -> None:
    from ..bench.config import ALL_METHODS, BenchConfig

    defaults = BenchConfig()
    b = sub.add_parser("bench", help="methods x targets x K x batch sizes x datasets; JSON + markdown + plots")
    b.add_argument("--targets", nargs="+", default=defaults.targets, help="target models (one draft, many targets)")
    b.add_argument("--draft", nargs="+", default=[defaults.draft],
                   help="the parallel (PARD) draft; several are measured side by side (e.g. a plain draft and a "
                        "feature draft)")
    b.add_argument("--ar-draft", default=defaults.ar_draft, help="the autoregressive draft for vsd / hf-assisted")
    b.add_argument("--methods", nargs="+", default=defaults.methods, choices=ALL_METHODS, metavar="METHOD",
                   help=f"any of {', '.join(ALL_METHODS)} (default: all but pard-plain, a feature draft run "
                        "without the target's hidden states)")
    b.add_argument("--datasets", nargs="+", default=defaults.datasets,
                   help="humaneval, gsm8k, math500, spec-bench, stdlib, NAME=LOCAL.jsonl or FILE.jsonl")
    b.add_argument("--prompt-field", help="prompt field of local jsonl files (default: auto)")
    add_draft_length_options(b, many=True)
    add_engine_option(b, many=True)
    b.add_argument("--batch-sizes", nargs="+", type=int, default=defaults.batch_sizes)
    b.add_argument("--num-prompts", type=int, default=defaults.num_prompts, help="prompts per dataset")
    b.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    add_sampling_options(b)
    b.add_argument("--repeats", type=int, default=defaults.repeats,
                   help="timed rounds, each one pass of every configuration side by side (the median is reported)")
    b.add_argument("--warmup", type=int, default=defaults.warmup,
                   help="untimed rounds per configuration (a batch of each batch size), all before the first timed one")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-chat-template", action="store_true")
    b.add_argument("--output", default=defaults.output,
                   help="directory for the results (its files are replaced atomically when the run finishes)")
    add_model_options(b, trust_remote_code=False)
    b.set_defaults(func=run_bench)

    al = sub.add_parser("bench-align", help="compare PARD drafts trained on raw / regenerated / distilled data")
    al.add_argument("--teacher", default="zoo:large", help="the target that regenerates data and teaches")
    al.add_argument("--base", default="zoo:draft", help="the AR draft every variant is adapted from")
    al.add_argument("--targets", nargs="+", default=["zoo:small", "zoo:medium", "zoo:large"])
    al.add_argument("--corpus", default="stdlib:train")
    al.add_argument("--windows", type=int, default=1500, help="corpus windows to regenerate")
    al.add_argument("--steps", type=int, default=500, help="training steps per variant")
    al.add_argument("--lr", type=float, default=1e-3)
    al.add_argument("--datasets", nargs="+", default=["humaneval"])
    al.add_argument("--num-prompts", type=int, default=10)
    al.add_argument("--max-new-tokens", type=int, default=128)
    al.add_argument("--repeats", type=int, default=3)
    al.add_argument("--bf16", action="store_true", help="train with bf16 autocast")
    al.add_argument("--output", default="bench-results/alignment")
    al.set_defaults(func=run_bench_align)

    lat = sub.add_parser("bench-latency", help="forward time against tokens per pass, T(n) for n = 1..N, per "
                                               "model (JSON + markdown + plot)")
    lat.add_argument("models", nargs="+", help="models to time (targets and drafts)")
    lat.add_argument("--max-tokens", type=int, default=17, help="largest n (default 17 = K 16 + 1)")
    lat.add_argument("--tokens", nargs="+", type=int, default=[], metavar="N",
                     help="time these n only (default 1..--max-tokens)")
    lat.add_argument("--context", type=int, default=200, help="tokens already in the cache")
    lat.add_argument("--repeats", type=int, default=5)
    lat.add_argument("--batch-size", type=int, default=1)
    lat.add_argument("--engine", default="eager",
                     help="eager: the dynamic cache; static: the static cache; compiled: static + torch.compile, one "
                          "compiled shape per n (compile time reported apart)")
    lat.add_argument("--matmuls", nargs="+", default=["auto"], metavar="MATMUL",
                     help="static/compiled: auto, kernel or library (the small-row kernel or the library GEMM); "
                          "several are timed side by side")
    lat.add_argument("--output", default="bench-results/latency")
    add_model_options(lat, trust_remote_code=False)
    lat.set_defaults(func=run_bench_latency)

    d = sub.add_parser("demo", help="offline demo: AR vs vanilla SD vs PARD on HumanEval prompts (SmolLM2, or the "
                                     "embedded stdlib family)")
    d.add_argument("--family", choices=tuple(DEMO_FAMILIES), default="smollm2",
                   help="smollm2: SmolLM2-135M-Instruct with zoo:smollm2-pard, answering chat requests; stdlib: "
                        "the embedded family (zoo:large with zoo:pard) completing code")
    d.add_argument("--num-prompts", type=int, default=None, help="default: 2 (smollm2), 3 (stdlib)")
    d.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 (smollm2), 96 (stdlib)")
    d.add_argument("-k", type=draft_length, default=None,
                   help="draft tokens per step, or auto (default: the best measured for the family on 2 CPU cores)")
    d.add_argument("--output", default="runs/demo")
    d.add_argument("--dtype", default="auto")
    d.set_defaults(func=run_demo)


def run_bench(args) -> int:
    from pathlib import Path

    from ..bench.config import BenchConfig
    from ..bench.report import bench_markdown, bench_plots, plot_or_note
    from ..bench.runner import run_bench
    from ..files import atomic_write_text

    config = BenchConfig(
        targets=args.targets, draft=args.draft, ar_draft=args.ar_draft, methods=args.methods,
        datasets=args.datasets, ks=args.ks, max_k=args.max_k, engines=args.engines, matmuls=args.matmuls,
        batch_sizes=args.batch_sizes,
        num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repeats=args.repeats, warmup=args.warmup, seed=args.seed, dtype=args.dtype, device=args.device,
        chat_template=not args.no_chat_template, prompt_field=args.prompt_field, output=args.output,
    )
    summary = run_bench(config)
    out = Path(args.output)
    markdown = bench_markdown(summary)
    atomic_write_text(out / "results.md", markdown)
    plots = plot_or_note(bench_plots, summary, out) or []
    print(markdown)
    mismatches = sum(m["mismatches"] or 0 for m in summary["measurements"])
    if config.temperature == 0:
        print(f"greedy outputs differing from ar: {mismatches}")
    print(f"wrote {out}/summary.json, generations.jsonl, results.md"
          + "".join(f", {p.name}" for p in plots), file=sys.stderr)
    return 0 if mismatches == 0 else 3


def run_bench_latency(args) -> int:
    from ..bench.latency import LatencyConfig, latency_markdown, run_latency
    from ..errors import InvalidArgumentError

    sizes = [args.max_tokens, min(args.tokens, default=1), args.context, args.repeats, args.batch_size]
    if min(sizes) < 1:
        raise InvalidArgumentError("--max-tokens, --tokens, --context, --repeats and --batch-size must be >= 1")
    summary = run_latency(LatencyConfig(models=args.models, max_tokens=args.max_tokens, tokens=args.tokens,
                                        context=args.context, matmuls=args.matmuls,
                                        repeats=args.repeats, batch_size=args.batch_size, dtype=args.dtype,
                                        device=args.device, engine=args.engine, output=args.output))
    print(latency_markdown(summary))
    print(f"wrote {args.output}/summary.json, results.md" + "".join(f", {p}" for p in summary["plots"]),
          file=sys.stderr)
    return 0


def run_bench_align(args) -> int:
    from ..bench.alignment import AlignmentConfig, run_alignment
    from ..bench.config import BenchConfig

    result = run_alignment(AlignmentConfig(
        teacher=args.teacher, base=args.base, targets=args.targets, corpus=args.corpus,
        output=args.output, windows=args.windows, steps=args.steps, learning_rate=args.lr, bf16=args.bf16,
        bench=BenchConfig(datasets=args.datasets, num_prompts=args.num_prompts, max_new_tokens=args.max_new_tokens,
                          repeats=args.repeats),
    ))
    print(result["table"])
    return 0


# family -> target, PARD draft, AR draft, K, prompts, new tokens (K: the best measured on 2 CPU cores, README)
DEMO_FAMILIES = {
    "smollm2": ("zoo:smollm2", "zoo:smollm2-pard", "zoo:smollm2-pard", 4, 2, 64),
    "stdlib": ("zoo:large", "zoo:pard", "zoo:draft", 4, 3, 96),
}


def run_demo(args) -> int:
    from pathlib import Path

    from ..bench.config import BenchConfig
    from ..bench.report import bench_markdown
    from ..bench.runner import run_bench

    target, draft, ar_draft, k, prompts, new_tokens = DEMO_FAMILIES[args.family]
    count = args.num_prompts or prompts
    config = BenchConfig(
        targets=[target], draft=draft, ar_draft=ar_draft, methods=["ar", "vsd", "pard"], datasets=["humaneval"],
        ks=[args.k or k], num_prompts=count, max_new_tokens=args.max_new_tokens or new_tokens, repeats=1, warmup=1,
        dtype=args.dtype, output=args.output,
    )
    summary = run_bench(config)
    _print_demo_texts(Path(args.output) / "generations.jsonl", count, target, chat=args.family == "smollm2")
    print(bench_markdown(summary))
    return 0


def _print_demo_texts(generations, count: int, target: str, chat: bool) -> None:
    from ..bench.datasets import load_prompts
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(target)
    records = [json.loads(line) for line in generations.read_text().splitlines()]
    prompts = {p.id: p.text for p in load_prompts("humaneval", limit=count)}
    for record in [r for r in records if r["method"] == "ar"][:count]:
        same = all(r["matches_ar"] for r in records if r["prompt_id"] == record["prompt_id"])
        print(f"\n── {record['prompt_id']} (identical output from ar, vsd and pard: {'yes' if same else 'NO'}) ──")
        answer = tokenizer.decode(record["output_ids"], skip_special_tokens=True)
        prompt = prompts[record["prompt_id"]]
        print(f"[user]\n{prompt.strip()}\n[assistant]\n{answer}" if chat else prompt + answer)

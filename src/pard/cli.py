"""The ``pard`` command line. Thin: parse -> call the API -> print. Errors are one line (``--debug`` for more)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import PardError


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (off unless asked)"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pard", description="PARD speculative decoding: parallel draft models.")
    parser.add_argument("--version", action="version", version=f"pard {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate text with AR, vanilla SD or PARD and print stats")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--target", required=True, help="target model: hub id, local directory or tiny:NAME")
    gen.add_argument("--draft", help="draft model (parallel if its config has pard_token, else autoregressive)")
    gen.add_argument(
        "--method",
        choices=["ar", "vsd", "pard"],
        help="decoding method (default: pard for a parallel draft, vsd for an AR draft, ar without a draft)",
    )
    gen.add_argument("-k", "--num-draft-tokens", type=int, default=8, help="draft tokens per step K (default 8)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, help="seed for sampling")
    gen.add_argument("--no-chat-template", action="store_true", help="tokenize the prompt as plain text")
    gen.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    _add_model_options(gen)
    gen.set_defaults(func=_cmd_generate)

    _add_train_parser(sub)

    bt = sub.add_parser("bench-train", help="measure COD's training speed-up against the no-drop layout")
    bt.add_argument("--model", required=True, help="the AR model to adapt (hub id, local dir, tiny:NAME)")
    bt.add_argument("--data", required=True, nargs="+", help="training data (as for `pard train`)")
    bt.add_argument("--output", default="bench-results/train-cost", help="where JSON, markdown and PNG go")
    bt.add_argument("-k", "--num-draft-tokens", type=int, default=8)
    bt.add_argument("--r", type=float, default=0.7)
    bt.add_argument("--r-min", type=float, default=0.2)
    bt.add_argument("--max-seq-len", type=int, default=512)
    bt.add_argument("--batch-size", type=int, default=8)
    bt.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    bt.add_argument("--repeats", type=int, default=3, help="runs per layout (medians are reported)")
    bt.set_defaults(func=_cmd_bench_train)

    fl = sub.add_parser("flops", help="training Pflops per 1M tokens: PARD vs EAGLE heads (paper Appendix A)")
    fl.add_argument("--target-params", type=float, default=70e9, help="target parameters (EAGLE runs it)")
    fl.add_argument("--draft-params", type=float, default=1e9, help="PARD draft parameters")
    fl.add_argument("--eagle-layer-params", type=float, default=0.86e9, help="EAGLE head decoder-layer parameters")
    fl.add_argument("--lm-head-params", type=float, default=1.01e9, help="LM head parameters")
    fl.add_argument("-k", "--num-draft-tokens", type=int, default=8)
    fl.add_argument("--r", type=float, default=0.7)
    fl.add_argument("--r-min", type=float, default=0.2)
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=_cmd_flops)

    _add_bench_parsers(sub)

    rg = sub.add_parser("regenerate", help="rewrite a dataset's responses with the target (resumable JSONL)")
    rg.add_argument("--target", required=True)
    rg.add_argument("--data", required=True, nargs="+", help="as for `pard train`")
    rg.add_argument("--output", required=True, help="JSONL file; appended to, and resumed from, if it exists")
    rg.add_argument("--draft", help="speed up with a draft (greedy output is identical)")
    rg.add_argument("-k", "--num-draft-tokens", type=int, default=8)
    rg.add_argument("--max-new-tokens", type=int, default=256)
    prefix = rg.add_mutually_exclusive_group()
    prefix.add_argument("--prefix-tokens", type=int, default=64, help="plain text: keep this many tokens")
    prefix.add_argument("--prefix-fraction", type=float, help="plain text: keep this fraction of each record")
    rg.add_argument("--temperature", type=float, default=0.0)
    rg.add_argument("--top-p", type=float)
    rg.add_argument("--batch-size", type=int, default=8)
    rg.add_argument("--limit", type=int, help="only the first N records")
    rg.add_argument("--seed", type=int, default=0)
    rg.add_argument("--text-field", default="text")
    rg.add_argument("--messages-field", default="messages")
    rg.add_argument("--dtype", default="auto")
    rg.add_argument("--device", default="auto")
    rg.add_argument("--trust-remote-code", action="store_true")
    rg.set_defaults(func=_cmd_regenerate)

    ex = sub.add_parser("export", help="write a self-contained PARD draft that upstream vLLM serves")
    ex.add_argument("draft", help="the PARD draft (hub id, local dir, zoo:pard)")
    ex.add_argument("--output", required=True, help="directory to write")
    ex.add_argument("--target", help="validate the pair: same tokenizer, mask id inside the target's vocabulary")
    ex.add_argument("-k", "--num-draft-tokens", type=int, default=8, help="K in the model card's vllm command")
    ex.add_argument("--mask-token-id", type=int, help="the mask id, when the config does not say it")
    ex.add_argument("--mask-key", help="config key that holds the mask id (default: pard_token or a known alias)")
    ex.add_argument("--trust-remote-code", action="store_true")
    ex.set_defaults(func=_cmd_export)

    sv = sub.add_parser(
        "serve",
        help="start vLLM's OpenAI-compatible server with a PARD draft (flags after -- go to vllm serve)",
    )
    sv.add_argument("--target", required=True)
    sv.add_argument("--draft", required=True, help="a PARD draft directory or hub id (see `pard export`)")
    sv.add_argument("-k", "--k", "--num-draft-tokens", dest="num_draft_tokens", type=int, default=8,
                    help="draft tokens per step (vLLM's num_speculative_tokens)")
    sv.add_argument("--tensor-parallel-size", type=int)
    sv.add_argument("--no-validate", action="store_true", help="skip the tokenizer / mask-id check of the pair")
    sv.add_argument("--dry-run", action="store_true", help="print the vllm command instead of running it")
    sv.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then any other `vllm serve` flags")
    sv.set_defaults(func=_cmd_serve)

    zoo = sub.add_parser("zoo", help="the embedded model family (zoo:small/medium/large targets, zoo:draft, zoo:pard)")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zb = zoo_sub.add_parser("build", help="reproduce the family from scratch on the stdlib corpus (seeded)")
    zb.add_argument("--output", help="where the family goes (default: inside the installed package)")
    zb.add_argument("--work-dir", default="runs/zoo", help="checkpoints and intermediate runs (resumable)")
    zb.add_argument("--scale", type=float, default=1.0, help="multiply every step count (e.g. 0.01 for a smoke run)")
    zb.add_argument("--only", nargs="+", help="build only these members")
    zb.set_defaults(func=_cmd_zoo_build)
    zl = zoo_sub.add_parser("list", help="show the family: sizes, held-out loss, how each was trained")
    zl.set_defaults(func=_cmd_zoo_list)
    return parser


def _add_bench_parsers(sub) -> None:
    from .bench.runner import ALL_METHODS, BenchConfig

    defaults = BenchConfig()
    b = sub.add_parser("bench", help="methods x targets x K x batch sizes x datasets; JSON + markdown + plots")
    b.add_argument("--targets", nargs="+", default=defaults.targets, help="target models (one draft, many targets)")
    b.add_argument("--draft", default=defaults.draft, help="the parallel (PARD) draft")
    b.add_argument("--ar-draft", default=defaults.ar_draft, help="the autoregressive draft for vsd / hf-assisted")
    b.add_argument("--methods", nargs="+", default=defaults.methods, choices=ALL_METHODS, metavar="METHOD",
                   help=f"any of {', '.join(ALL_METHODS)} (default: all)")
    b.add_argument("--datasets", nargs="+", default=defaults.datasets,
                   help="humaneval, gsm8k, math500, spec-bench, stdlib, NAME=LOCAL.jsonl or FILE.jsonl")
    b.add_argument("--prompt-field", help="prompt field of local jsonl files (default: auto)")
    b.add_argument("-k", "--ks", nargs="+", type=int, default=defaults.ks, help="draft lengths K to measure")
    b.add_argument("--batch-sizes", nargs="+", type=int, default=defaults.batch_sizes)
    b.add_argument("--num-prompts", type=int, default=defaults.num_prompts, help="prompts per dataset")
    b.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    b.add_argument("--temperature", type=float, default=0.0)
    b.add_argument("--top-k", type=int)
    b.add_argument("--top-p", type=float)
    b.add_argument("--repeats", type=int, default=defaults.repeats, help="timed passes (the median is reported)")
    b.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed generations per configuration")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-chat-template", action="store_true")
    b.add_argument("--output", default=defaults.output, help="directory for the results")
    b.add_argument("--dtype", default="auto")
    b.add_argument("--device", default="auto")
    b.set_defaults(func=_cmd_bench)

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
    al.set_defaults(func=_cmd_bench_align)

    d = sub.add_parser("demo", help="offline demo: AR vs vanilla SD vs PARD on HumanEval with the embedded family")
    d.add_argument("--num-prompts", type=int, default=3)
    d.add_argument("--max-new-tokens", type=int, default=96)
    d.add_argument("-k", type=int, default=4, help="draft tokens per step (4 measured best on the embedded family)")
    d.add_argument("--output", default="runs/demo")
    d.add_argument("--dtype", default="auto")
    d.set_defaults(func=_cmd_demo)


def _cmd_bench(args) -> int:
    from pathlib import Path

    from .bench.report import bench_markdown, bench_plots
    from .bench.runner import BenchConfig, run_bench

    config = BenchConfig(
        targets=args.targets, draft=args.draft, ar_draft=args.ar_draft, methods=args.methods,
        datasets=args.datasets, ks=args.ks, batch_sizes=args.batch_sizes, num_prompts=args.num_prompts,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repeats=args.repeats, warmup=args.warmup, seed=args.seed, dtype=args.dtype, device=args.device,
        chat_template=not args.no_chat_template, prompt_field=args.prompt_field, output=args.output,
    )
    summary = run_bench(config)
    out = Path(args.output)
    markdown = bench_markdown(summary)
    (out / "results.md").write_text(markdown)
    plots = bench_plots(summary, out)
    print(markdown)
    mismatches = sum(m["mismatches"] or 0 for m in summary["measurements"])
    if config.temperature == 0:
        print(f"greedy outputs differing from ar: {mismatches}")
    print(f"wrote {out}/summary.json, generations.jsonl, results.md, {', '.join(p.name for p in plots)}",
          file=sys.stderr)
    return 0 if mismatches == 0 else 3


def _cmd_bench_align(args) -> int:
    from .bench.alignment import AlignmentConfig, run_alignment
    from .bench.runner import BenchConfig

    result = run_alignment(AlignmentConfig(
        teacher=args.teacher, base=args.base, targets=args.targets, corpus=args.corpus,
        output=args.output, windows=args.windows, steps=args.steps, learning_rate=args.lr, bf16=args.bf16,
        bench=BenchConfig(datasets=args.datasets, num_prompts=args.num_prompts, max_new_tokens=args.max_new_tokens,
                          repeats=args.repeats),
    ))
    print(result["table"])
    return 0


def _cmd_demo(args) -> int:
    from pathlib import Path

    from .bench.report import bench_markdown
    from .bench.runner import BenchConfig, run_bench

    config = BenchConfig(
        targets=["zoo:large"], draft="zoo:pard", ar_draft="zoo:draft", methods=["ar", "vsd", "pard"],
        datasets=["humaneval"], ks=[args.k], num_prompts=args.num_prompts, max_new_tokens=args.max_new_tokens,
        repeats=1, warmup=1, dtype=args.dtype, output=args.output,
    )
    summary = run_bench(config)
    _print_demo_texts(Path(args.output) / "generations.jsonl", args.num_prompts)
    print(bench_markdown(summary))
    return 0


def _print_demo_texts(generations, count: int) -> None:
    from .bench.datasets import load_prompts
    from .models import load_tokenizer

    tokenizer = load_tokenizer("zoo:large")
    records = [json.loads(line) for line in generations.read_text().splitlines()]
    prompts = {p.id: p.text for p in load_prompts("humaneval", limit=count)}
    for record in [r for r in records if r["method"] == "ar"][:count]:
        same = all(r["matches_ar"] for r in records if r["prompt_id"] == record["prompt_id"])
        print(f"\n── {record['prompt_id']} (identical output from ar, vsd and pard: {'yes' if same else 'NO'}) ──")
        print(prompts[record["prompt_id"]] + tokenizer.decode(record["output_ids"]))


def _cmd_regenerate(args) -> int:
    from .decoding import SamplingConfig
    from .regenerate import RegenerateConfig, regenerate
    from .training.data import DataConfig

    config = RegenerateConfig(
        target=args.target, data=args.data, output=args.output, draft=args.draft,
        num_draft_tokens=args.num_draft_tokens, max_new_tokens=args.max_new_tokens,
        prefix_tokens=None if args.prefix_fraction else args.prefix_tokens, prefix_fraction=args.prefix_fraction,
        sampling=SamplingConfig(args.temperature, None, args.top_p), batch_size=args.batch_size, seed=args.seed,
        limit=args.limit, data_config=DataConfig(text_field=args.text_field, messages_field=args.messages_field),
        dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
    )
    print(f"wrote {regenerate(config)}", file=sys.stderr)
    return 0


def _cmd_export(args) -> int:
    from .export import export_draft

    out = export_draft(args.draft, args.output, target=args.target, num_draft_tokens=args.num_draft_tokens,
                       mask_token_id=args.mask_token_id, mask_key=args.mask_key,
                       trust_remote_code=args.trust_remote_code)
    print(f"exported PARD draft to {out} (see {out / 'README.md'} for the vllm serve line)")
    return 0


def _cmd_serve(args) -> int:
    from .errors import InvalidArgumentError
    from .export import find_mask_token, validate_pair
    from .models import load_config, load_tokenizer
    from .vllm import require_vllm, serve_command, shell_line

    if args.num_draft_tokens < 1:
        raise InvalidArgumentError(f"the number of draft tokens K must be >= 1, got {args.num_draft_tokens}")
    if not args.no_validate:
        mask_id, key = find_mask_token(load_config(args.draft))
        if key != "pard_token":
            raise InvalidArgumentError(
                f"vLLM reads the mask id from 'pard_token', but this draft stores it under {key!r}; "
                "run `pard export` on it first"
            )
        validate_pair(load_tokenizer(args.draft), args.target, mask_id)
    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    argv = serve_command(args.target, args.draft, args.num_draft_tokens,
                         tensor_parallel_size=args.tensor_parallel_size, extra_args=extra)
    if args.dry_run:
        print(shell_line(argv))
        return 0
    require_vllm()
    print(shell_line(argv), file=sys.stderr)
    os.execvp(argv[0], argv)  # replaces this process: signals and exit code are vLLM's own


def _cmd_zoo_build(args) -> int:
    from pathlib import Path

    from .zoo import ZOO_DIR
    from .zoo.build import build_zoo

    family = build_zoo(Path(args.output) if args.output else ZOO_DIR, Path(args.work_dir), scale=args.scale,
                       only=args.only)
    _print_family(family)
    return 0


def _cmd_zoo_list(args) -> int:
    from .zoo import ZOO_DIR

    path = ZOO_DIR / "family.json"
    if not path.exists():
        raise PardError("the embedded family is not built; run `pard zoo build`")
    _print_family(json.loads(path.read_text()))
    return 0


def _print_family(family: dict) -> None:
    from .bench.report import markdown_table

    rows = [[f"zoo:{name}", f"{m['parameters'] / 1e6:.1f}M", m["num_draft_tokens"], m["steps"],
             f"{m['train_seconds'] / 60:.1f}", m["heldout_loss"]] for name, m in family["members"].items()]
    print(markdown_table(["model", "parameters", "K_train", "steps", "train minutes", "held-out loss (nats/token)"],
                         rows))
    if "stage_seconds" in family:
        print(f"\nall stages (training + data regeneration): {family['stage_seconds'] / 60:.1f} minutes")


def _cmd_bench_train(args) -> int:
    from pathlib import Path

    from .bench.train_cost import run_training_cost, training_cost_markdown
    from .training import CODConfig

    results = run_training_cost(
        args.model, args.data, Path(args.output), cod=CODConfig(args.num_draft_tokens, args.r, args.r_min),
        max_seq_len=args.max_seq_len, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
    )
    print(training_cost_markdown(results))
    print(f"wrote {args.output}/train_cost.{{json,md,png}}", file=sys.stderr)
    return 0


def _cmd_flops(args) -> int:
    from .bench.report import markdown_table
    from .training import CODConfig
    from .training.cost import FlopsInputs, cod_token_factor, training_pflops

    cod = CODConfig(args.num_draft_tokens, args.r, args.r_min)
    inputs = FlopsInputs(args.target_params, args.draft_params, args.eagle_layer_params, args.lm_head_params)
    table = training_pflops(inputs, cod)
    if args.json:
        print(json.dumps({"cod_token_factor": cod_token_factor(cod), "pflops_per_1m_tokens": table}))
        return 0
    pard_total = table["PARD"]["total"]
    rows = [[name, v["forward"], v["backward"], v["total"], v["total"] / pard_total] for name, v in table.items()]
    print(f"Training cost in Pflops per 1M tokens (COD keeps {cod_token_factor(cod):.2f} tokens per token, "
          f"K={cod.num_draft_tokens})")
    print(markdown_table(["method", "forward", "backward", "total", "x PARD"], rows))
    return 0


def _help(cls, name: str) -> str:
    """Help text from a config dataclass field's metadata (one source for API docs and CLI help)."""
    return cls.__dataclass_fields__[name].metadata.get("help", "")


def _add_train_parser(sub) -> None:
    from .training.data import DataConfig
    from .training.trainer import TrainConfig

    tr = sub.add_parser(
        "train",
        help="adapt an autoregressive LM into a PARD draft (mask tokens + COD)",
        description="Runs on the Hugging Face Trainer: launch with `torchrun` or `accelerate launch` for multi-GPU.",
    )
    tr.add_argument("--model", required=True, help=_help(TrainConfig, "model"))
    tr.add_argument("--data", required=True, nargs="+", help=_help(TrainConfig, "data"))
    tr.add_argument("--output", required=True, help=_help(TrainConfig, "output"))
    tr.add_argument("-k", "--num-draft-tokens", type=int, default=8, help="K_train: tokens predicted per pass")
    tr.add_argument("--r", type=float, default=0.7, help="COD retention decay r (1 = no dropping)")
    tr.add_argument("--r-min", type=float, default=0.2, help="COD minimum retention r_min")
    mask = tr.add_mutually_exclusive_group()
    mask.add_argument("--mask-token-id", type=int, nargs="+", dest="mask_token_ids", metavar="ID",
                      help=_help(TrainConfig, "mask_token_ids"))
    mask.add_argument("--add-mask-token", action="store_true", help=_help(TrainConfig, "add_mask_token"))
    for name, flag in [("epochs", float), ("max_steps", int), ("learning_rate", float), ("warmup_ratio", float),
                       ("weight_decay", float), ("batch_size", int), ("grad_accum", int), ("seed", int),
                       ("save_steps", int), ("save_total_limit", int), ("logging_steps", int)]:
        option = "--lr" if name == "learning_rate" else "--" + name.replace("_", "-")
        default = TrainConfig.__dataclass_fields__[name].default
        tr.add_argument(option, type=flag, default=default, dest=name,
                        help=f"{_help(TrainConfig, name)} (default {default})")
    tr.add_argument("--max-seq-len", type=int, default=512, help=_help(DataConfig, "max_seq_len"))
    tr.add_argument("--text-field", default="text", help=_help(DataConfig, "text_field"))
    tr.add_argument("--messages-field", default="messages", help=_help(DataConfig, "messages_field"))
    tr.add_argument("--assistant-only", action="store_true", help=_help(DataConfig, "assistant_only"))
    tr.add_argument("--no-packing", action="store_true", help="one record per sequence (padded batches)")
    tr.add_argument("--data-split", default="train", help=_help(DataConfig, "split"))
    tr.add_argument("--resume", action="store_true", help=_help(TrainConfig, "resume"))
    tr.add_argument("--bf16", action="store_true", help=_help(TrainConfig, "bf16"))
    tr.add_argument("--device", default="auto", help=_help(TrainConfig, "device"))
    tr.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    tr.add_argument("--gradient-checkpointing", action="store_true", help=_help(TrainConfig, "gradient_checkpointing"))
    tr.add_argument("--deepspeed", help=_help(TrainConfig, "deepspeed"))
    tr.add_argument("--report-to", default="none", help=_help(TrainConfig, "report_to"))
    tr.add_argument("--trust-remote-code", action="store_true", help=_help(TrainConfig, "trust_remote_code"))
    tr.add_argument("--no-progress", action="store_true", help=_help(TrainConfig, "disable_progress"))
    tr.add_argument("--distill-from", metavar="TARGET", help=_help(TrainConfig, "distill_from"))
    tr.add_argument("--kd-weight", type=float, default=1.0, help=_help(TrainConfig, "kd_weight"))
    tr.add_argument("--kd-temperature", type=float, default=1.0, help=_help(TrainConfig, "kd_temperature"))
    tr.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .training import CODConfig, DataConfig, TrainConfig, train

    config = TrainConfig(
        model=args.model,
        data=args.data,
        output=args.output,
        cod=CODConfig(args.num_draft_tokens, args.r, args.r_min),
        data_config=DataConfig(
            text_field=args.text_field,
            messages_field=args.messages_field,
            assistant_only=args.assistant_only,
            max_seq_len=args.max_seq_len,
            packing=not args.no_packing,
            split=args.data_split,
        ),
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        mask_token_ids=args.mask_token_ids,
        add_mask_token=args.add_mask_token,
        seed=args.seed,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_steps=args.logging_steps,
        resume=args.resume,
        bf16=args.bf16,
        device=args.device,
        attn_implementation=args.attn_implementation,
        gradient_checkpointing=args.gradient_checkpointing,
        deepspeed=args.deepspeed,
        trust_remote_code=args.trust_remote_code,
        report_to=args.report_to,
        disable_progress=args.no_progress,
        distill_from=args.distill_from,
        kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature,
    )
    output = train(config)
    if os.environ.get("RANK", "0") == "0":  # once, not per process under torchrun
        print(f"saved PARD draft to {output}", file=sys.stderr)
    return 0


def _cmd_generate(args) -> int:
    from .decoding import SamplingConfig, SpeculativeDecoder
    from .models import load_pair
    from .prompts import encode_prompt, eos_token_ids

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)  # validate before loading anything
    pair = load_pair(
        args.target, args.draft, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    method = args.method or {"pard": "pard", "ar": "vsd", None: "ar"}[pair.draft_kind]
    decoder = SpeculativeDecoder(
        pair.target,
        pair.draft,
        method=method,
        num_draft_tokens=args.num_draft_tokens,
        target_tokenizer=pair.tokenizer,
        draft_tokenizer=pair.draft_tokenizer,
    )
    prompt_ids = encode_prompt(pair.tokenizer, args.prompt, chat_template=not args.no_chat_template)
    streamer = None
    if not args.json:
        from transformers import TextStreamer

        streamer = TextStreamer(pair.tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = decoder.generate(
        [prompt_ids],
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        eos_token_id=eos_token_ids(pair.tokenizer, pair.target),
        seed=args.seed,
        streamer=streamer,
    )
    token_ids = out.sequences[0]
    if args.json:
        text = pair.tokenizer.decode(token_ids, skip_special_tokens=True)
        print(json.dumps({"text": text, "token_ids": token_ids, "stats": out.stats.to_dict()}))
    else:
        _print_stats(out.stats)
    return 0


def _print_stats(stats) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stats.method}  K={stats.num_draft_tokens}", show_header=False)
    table.add_row("tokens", str(stats.tokens))
    table.add_row("target forwards", str(stats.target_forwards))
    table.add_row("draft forwards", str(stats.draft_forwards))
    table.add_row("mean accepted length τ", f"{stats.mean_accepted_length:.2f}")
    if stats.acceptance_per_position:
        table.add_row("acceptance k-α (k=1..)", " ".join(f"{a:.2f}" for a in stats.acceptance_per_position))
    table.add_row("tokens/s", f"{stats.tokens_per_second:.1f}")
    table.add_row(
        "seconds prefill/draft/verify/other",
        f"{stats.prefill_seconds:.3f} / {stats.draft_seconds:.3f} / {stats.verify_seconds:.3f} / "
        f"{stats.other_seconds:.3f}",
    )
    Console(stderr=False).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except PardError as err:
        if args.debug:
            raise
        print(f"pard: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pard: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything unexpected still gets one line unless --debug
        if args.debug:
            raise
        print(f"pard: error: {type(err).__name__}: {err} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`pard generate`: one prompt through AR, vanilla SD or PARD, streamed, with the step statistics."""

from __future__ import annotations

import json

from .options import add_draft_length_options, add_engine_option, add_model_options, add_sampling_options


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text with AR, vanilla SD or PARD and print stats")
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--target", required=True, help="target model: hub id, local directory, zoo:NAME or tiny:NAME")
    p.add_argument("--draft", help="draft model (parallel if its config has pard_token, else autoregressive)")
    p.add_argument("--method", choices=["ar", "vsd", "pard"],
                   help="decoding method (default: pard for a parallel draft, vsd for an AR draft, ar without one)")
    add_draft_length_options(p)
    p.add_argument("--max-new-tokens", type=int, default=128)
    add_sampling_options(p)
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--no-chat-template", action="store_true", help="tokenize the prompt as plain text")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats")
    p.add_argument("--no-target-features", action="store_true",
                   help="run a feature draft as a plain PARD draft (without the target's hidden states)")
    add_engine_option(p)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..decoding import SamplingConfig, SpeculativeDecoder
    from ..decoding.engine import check_draft_length
    from ..decoding.engines import check_engine
    from ..kernels import check_matmul
    from ..models import load_pair
    from ..prompts import encode_prompt, eos_token_ids

    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)  # validate before loading anything
    check_engine(args.engine)
    check_matmul(args.matmul)
    check_draft_length(args.num_draft_tokens, args.max_k)
    pair = load_pair(args.target, args.draft, dtype=args.dtype, device=args.device,
                     trust_remote_code=args.trust_remote_code)
    decoder = SpeculativeDecoder(pair.target, pair.draft, method=args.method or pair.method,
                                 num_draft_tokens=args.num_draft_tokens, max_draft_tokens=args.max_k,
                                 engine=args.engine, matmul=args.matmul, target_tokenizer=pair.tokenizer,
                                 draft_tokenizer=pair.draft_tokenizer, target_features=not args.no_target_features)
    prompt_ids = encode_prompt(pair.tokenizer, args.prompt, chat_template=not args.no_chat_template)
    streamer = None
    if not args.json:
        from transformers import TextStreamer

        streamer = TextStreamer(pair.tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = decoder.generate([prompt_ids], max_new_tokens=args.max_new_tokens, sampling=sampling,
                           eos_token_id=eos_token_ids(pair.tokenizer, pair.target), seed=args.seed,
                           streamer=streamer)
    token_ids = out.sequences[0]
    if args.json:
        text = pair.tokenizer.decode(token_ids, skip_special_tokens=True)
        print(json.dumps({"text": text, "token_ids": token_ids, "stats": out.stats.to_dict()}))
    else:
        print_stats(out.stats)
    return 0


def print_stats(stats) -> None:
    from rich.console import Console
    from rich.table import Table

    k = f"auto (≤ {stats.num_draft_tokens})" if stats.adaptive else str(stats.num_draft_tokens)
    table = Table(title=stats.method if stats.method == "ar" else f"{stats.method}  K={k}", show_header=False)
    table.add_row("tokens", str(stats.tokens))
    table.add_row("target forwards", str(stats.target_forwards))
    if stats.adaptive:
        chosen = [n for row in stats.drafted_lengths for n in row]
        table.add_row("speculative steps", f"{stats.speculative_steps} of {stats.target_forwards} "
                                           f"(mean k {sum(chosen) / max(len(chosen), 1):.2f})")
    table.add_row("draft forwards", str(stats.draft_forwards))
    if stats.target_features:
        table.add_row("draft reads the target", f"hidden states of layers {stats.target_features}")
    table.add_row("mean accepted length τ", f"{stats.mean_accepted_length:.2f}")
    if stats.acceptance_per_position:
        table.add_row("acceptance k-α (k=1..)", " ".join(f"{a:.2f}" for a in stats.acceptance_per_position))
    table.add_row("tokens/s", f"{stats.tokens_per_second:.1f}")
    compiling = f" (compiling {stats.compile_seconds:.1f} s, not counted)" if stats.compile_seconds else ""
    table.add_row("engine", stats.engine + compiling + (f", matmul {stats.matmul}" if stats.engine != "eager" else ""))
    table.add_row(
        "seconds prefill/draft/verify/other",
        f"{stats.prefill_seconds:.3f} / {stats.draft_seconds:.3f} / {stats.verify_seconds:.3f} / "
        f"{stats.other_seconds:.3f}",
    )
    Console(stderr=False).print(table)

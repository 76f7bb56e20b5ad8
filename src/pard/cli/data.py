"""`pard regenerate`: the target rewrites a dataset's answers (resumable JSONL) so a draft learns what it says."""

from __future__ import annotations

import sys

from .options import add_draft_length_options, add_engine_option, add_model_options, add_sampling_options


def register(sub) -> None:
    p = sub.add_parser("regenerate", help="rewrite a dataset's responses with the target (resumable JSONL)")
    p.add_argument("--target", required=True)
    p.add_argument("--data", required=True, nargs="+", help="as for `pard train`")
    p.add_argument("--output", required=True,
                   help="JSONL file; resumed if it holds records of an earlier run (any other file is refused)")
    p.add_argument("--draft", help="speed up with a draft (greedy output is identical)")
    add_draft_length_options(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    prefix = p.add_mutually_exclusive_group()
    prefix.add_argument("--prefix-tokens", type=int, default=64, help="plain text: keep this many tokens")
    prefix.add_argument("--prefix-fraction", type=float, help="plain text: keep this fraction of each record")
    add_sampling_options(p, top_k=False)
    p.add_argument("--batch-size", type=int, default=8,
                   help="rows decoded at once; greedy runs refill a finished row with the next prompt")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-logprobs", type=int, default=0, metavar="N",
                   help="also store the target's N most likely tokens and log-probabilities at every written "
                        "position, for `pard train --distill-from data` (about 15 bytes per token and N)")
    p.add_argument("--store-features", metavar="LAYER", nargs="+", type=int,
                   help="also keep the target's hidden states at these layers (e.g. -1 -4: indices into its hidden "
                        "states, 0 = embeddings, -1 = the last) for every token of each record, bf16, in "
                        "OUTPUT.features beside the records: what `pard train --target-features data` trains a "
                        "feature draft on (hidden size x layers x 2 bytes per token)")
    p.add_argument("--teacher-force", action="store_true",
                   help="keep each record's own answers and only read the target over them (one batched pass per "
                        "--batch-size sequences instead of a decode step per token), storing what --top-logprobs "
                        "and --store-features ask for at their tokens: the target's view of text you already have "
                        "(plain text: --prefix-tokens 1 reads all of it)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--messages-field", default="messages")
    add_engine_option(p)
    add_model_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..decoding import SamplingConfig
    from ..regenerate import RegenerateConfig, regenerate
    from ..training.config import DataConfig

    config = RegenerateConfig(
        target=args.target, data=args.data, output=args.output, draft=args.draft,
        num_draft_tokens=args.num_draft_tokens, max_draft_tokens=args.max_k, max_new_tokens=args.max_new_tokens,
        prefix_tokens=None if args.prefix_fraction else args.prefix_tokens, prefix_fraction=args.prefix_fraction,
        sampling=SamplingConfig(args.temperature, None, args.top_p), batch_size=args.batch_size, seed=args.seed,
        limit=args.limit, data_config=DataConfig(text_field=args.text_field, messages_field=args.messages_field),
        dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code, engine=args.engine,
        matmul=args.matmul,
        top_logprobs=args.top_logprobs,
        store_features=args.store_features, teacher_force=args.teacher_force,
    )
    print(f"wrote {regenerate(config)}", file=sys.stderr)
    return 0

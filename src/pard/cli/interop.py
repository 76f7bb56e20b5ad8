"""Serving: `pard export` (a vLLM-ready draft directory) and `pard serve` (vLLM's server with a PARD draft).

Neither imports the Trainer or ``datasets``: they only read run directories (:mod:`pard.training.rundir`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .options import add_overwrite_option


def register(sub) -> None:
    ex = sub.add_parser("export", help="write a self-contained PARD draft that upstream vLLM serves")
    ex.add_argument("draft", help="the PARD draft (hub id, local dir, zoo:pard)")
    ex.add_argument("--output", required=True, help="directory to write (new or empty)")
    add_overwrite_option(ex, "--output directory")
    ex.add_argument("--target", help="validate the pair: same tokenizer, mask id inside the target's vocabulary")
    ex.add_argument("-k", "--num-draft-tokens", type=int, default=8, help="K in the model card's vllm command")
    ex.add_argument("--mask-token-id", type=int, help="the mask id, when the config does not say it")
    ex.add_argument("--mask-key", help="config key that holds the mask id (default: pard_token or a known alias)")
    ex.add_argument("--trust-remote-code", action="store_true")
    ex.set_defaults(func=run_export)

    sv = sub.add_parser(
        "serve", help="start vLLM's OpenAI-compatible server with a PARD draft (flags after -- go to vllm serve)"
    )
    sv.add_argument("--target", required=True)
    sv.add_argument("--draft", required=True, help="a PARD draft directory or hub id (see `pard export`)")
    sv.add_argument("-k", "--k", "--num-draft-tokens", dest="num_draft_tokens", type=int, default=8,
                    help="draft tokens per step (vLLM's num_speculative_tokens)")
    sv.add_argument("--tensor-parallel-size", type=int)
    sv.add_argument("--no-validate", action="store_true", help="skip the tokenizer / mask-id check of the pair")
    sv.add_argument("--dry-run", action="store_true", help="print the vllm command instead of running it")
    sv.add_argument("vllm_args", nargs=argparse.REMAINDER, help="-- then any other `vllm serve` flags")
    sv.set_defaults(func=run_serve)


def run_export(args) -> int:
    from ..export import export_draft

    out = export_draft(args.draft, args.output, target=args.target, num_draft_tokens=args.num_draft_tokens,
                       mask_token_id=args.mask_token_id, mask_key=args.mask_key,
                       trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
    print(f"exported PARD draft to {out} (see {out / 'README.md'} for the vllm serve line)")
    return 0


def run_serve(args) -> int:
    from ..errors import InvalidArgumentError
    from ..export import check_servable, validate_pair
    from ..mask_tokens import PARD_TOKEN_KEY, find_mask_token
    from ..models import load_config, load_tokenizer
    from ..specs import resolve_spec
    from ..vllm import require_vllm, serve_command, shell_line

    if args.num_draft_tokens < 1:
        raise InvalidArgumentError(f"the number of draft tokens K must be >= 1, got {args.num_draft_tokens}")
    # vLLM knows hub ids and directories, not our zoo: names: hand it the directories they stand for.
    draft = resolve_spec(args.draft)
    config = load_config(draft)
    check_servable(args.draft, config)  # what vLLM cannot load, whatever the target (before a GGUF target converts)
    target = resolve_spec(args.target)
    if not args.no_validate:
        mask_id, key = find_mask_token(config)
        if key != PARD_TOKEN_KEY:
            raise InvalidArgumentError(
                f"vLLM reads the mask id from {PARD_TOKEN_KEY!r}, but this draft stores it under {key!r}; "
                "run `pard export` on it first"
            )
        validate_pair(load_tokenizer(draft), target, mask_id)
    extra = args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args
    argv = serve_command(target, draft, args.num_draft_tokens, tensor_parallel_size=args.tensor_parallel_size,
                         extra_args=extra)
    if args.dry_run:
        print(shell_line(argv))
        return 0
    require_vllm()
    print(shell_line(argv), file=sys.stderr)
    os.execvp(argv[0], argv)  # replaces this process: signals and exit code are vLLM's own

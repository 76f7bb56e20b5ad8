"""Making drafts: `pard train` (options generated from TrainConfig), `pard bench-train`, `pard flops`."""

from __future__ import annotations

import json
import os
import sys

from .options import add_cod_options, add_config_options, cod_config, config_from_args


def register(sub) -> None:
    from ..training.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="adapt an autoregressive LM into a PARD draft (mask tokens + COD)",
        description="Runs on the Hugging Face Trainer: launch with `torchrun` or `accelerate launch` for multi-GPU.",
    )
    add_config_options(p, TrainConfig)
    p.set_defaults(func=run_train)

    bt = sub.add_parser("bench-train", help="measure COD's training speed-up against the no-drop layout")
    bt.add_argument("--model", required=True, help="the AR model to adapt (hub id, local dir, tiny:NAME)")
    bt.add_argument("--data", required=True, nargs="+", help="training data (as for `pard train`)")
    bt.add_argument("--output", default="bench-results/train-cost", help="where JSON, markdown and PNG go")
    add_cod_options(bt)
    bt.add_argument("--max-seq-len", type=int, default=512)
    bt.add_argument("--batch-size", type=int, default=8)
    bt.add_argument("--steps", type=int, default=20, help="optimizer steps per run (the first 2 are not timed)")
    bt.add_argument("--repeats", type=int, default=3, help="runs per layout (medians are reported)")
    bt.set_defaults(func=run_bench_train)

    fl = sub.add_parser("flops", help="training Pflops per 1M tokens: PARD vs EAGLE heads (paper Appendix A)")
    fl.add_argument("--target-params", type=float, default=70e9, help="target parameters (EAGLE runs it)")
    fl.add_argument("--draft-params", type=float, default=1e9, help="PARD draft parameters")
    fl.add_argument("--eagle-layer-params", type=float, default=0.86e9, help="EAGLE head decoder-layer parameters")
    fl.add_argument("--lm-head-params", type=float, default=1.01e9, help="LM head parameters")
    add_cod_options(fl)
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=run_flops)


def run_train(args) -> int:
    from ..training.config import TrainConfig
    from ..training.trainer import train

    output = train(config_from_args(TrainConfig, args))
    if os.environ.get("RANK", "0") == "0":  # once, not per process under torchrun
        print(f"saved PARD draft to {output}", file=sys.stderr)
    return 0


def run_bench_train(args) -> int:
    import importlib.util
    from pathlib import Path

    from ..bench.train_cost import run_training_cost, training_cost_markdown

    results = run_training_cost(args.model, args.data, Path(args.output), cod=cod_config(args),
                                max_seq_len=args.max_seq_len, batch_size=args.batch_size, steps=args.steps,
                                repeats=args.repeats)
    print(training_cost_markdown(results))
    plotted = importlib.util.find_spec("matplotlib") is not None  # else plot_or_note said why there is no plot
    print(f"wrote {args.output}/train_cost.json, train_cost.md" + (", train_cost.png" if plotted else ""),
          file=sys.stderr)
    return 0


def run_flops(args) -> int:
    from ..bench.report import markdown_table
    from ..training.cost import FlopsInputs, cod_token_factor, training_pflops

    cod = cod_config(args)
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

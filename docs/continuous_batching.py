"""How much does continuous batching save `pard regenerate`? SmolLM2 answers the same chat prompts twice, side by
side: in fixed batches (a batch decodes until its longest answer ends) and as one pool of the same number of rows
(an answer that ends hands its row to the next prompt). Greedy, fp32, the engine `pard regenerate` picks.

    python docs/continuous_batching.py --prompts 64 --batch-size 16   # ~10 min on 2 CPU cores

Prints and writes (``--output``, default ``bench-results/continuous-batching``) a JSON record and a markdown
table: seconds, answers per second, tokens per second, target passes and the rows they carried. The prompts are
the ``cpu`` recipe's stdlib coding requests (``pard zoo build --only smollm2-pard``), 256 new tokens at most.
Compilation is not counted (the engine times it apart); the answers of both runs are compared.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pard.corpus import stdlib_chat_prompts
from pard.decoding import SpeculativeDecoder
from pard.models import load_pair
from pard.prompts import eos_token_ids, render_chat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="where SmolLM2 runs (cpu, cuda)")
    parser.add_argument("--output", default="bench-results/continuous-batching")
    args = parser.parse_args()

    pair = load_pair("zoo:smollm2", dtype="float32", device=args.device)
    eos = sorted(eos_token_ids(pair.tokenizer, pair.target))
    prompts = [render_chat(pair.tokenizer, r["messages"][:-1], add_generation_prompt=True)
               for r in stdlib_chat_prompts("train", args.prompts)]
    decoder = SpeculativeDecoder(pair.target, method="ar", expected_tokens=len(prompts) * args.max_new_tokens)
    # Warm-up: compiles the (batch size, pass width) shapes both runs use.
    engine = decoder.generate(prompts[: args.batch_size], max_new_tokens=8, eos_token_id=eos).stats.engine

    def fixed_batches():
        outs = [decoder.generate(prompts[i : i + args.batch_size], max_new_tokens=args.max_new_tokens,
                                 eos_token_id=eos) for i in range(0, len(prompts), args.batch_size)]
        return [s for o in outs for s in o.sequences], outs[0].stats.merged([o.stats for o in outs[1:]])

    def pooled():
        out = decoder.generate(prompts, max_new_tokens=args.max_new_tokens, eos_token_id=eos,
                               max_batch_size=args.batch_size)
        return out.sequences, out.stats

    rows = []
    answers = {}
    for name, run in [("fixed batches", fixed_batches), ("continuous batching", pooled)]:
        started = time.perf_counter()
        sequences, stats = run()
        # The first run meets the full-length cache shape first: its compilation is not decoding time.
        seconds = time.perf_counter() - started - stats.compile_seconds
        passes = stats.target_forwards
        answers[name] = sequences
        tokens = sum(map(len, sequences))
        rows.append({"mode": name, "seconds": round(seconds, 1), "answers_per_s": round(len(sequences) / seconds, 3),
                     "tokens_per_s": round(tokens / seconds, 1), "target_passes": passes,
                     "tokens": tokens, "row_utilisation": round(tokens / (passes * args.batch_size), 3)})
        print(rows[-1], flush=True)
    differing = sum(a != b for a, b in zip(answers["fixed batches"], answers["continuous batching"]))
    speedup = rows[0]["seconds"] / rows[1]["seconds"]
    record = {"prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "engine": engine, "threads": torch.get_num_threads(), "runs": rows,
              "speedup": round(speedup, 2), "differing_answers": differing}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "continuous_batching.json").write_text(json.dumps(record, indent=2) + "\n")
    table = ["| mode | seconds | answers/s | tokens/s | target passes | rows used |", "|---|---|---|---|---|---|"]
    table += [f"| {r['mode']} | {r['seconds']} | {r['answers_per_s']} | {r['tokens_per_s']} | {r['target_passes']} "
              f"| {r['row_utilisation']:.0%} |" for r in rows]
    summary = f"speedup {speedup:.2f}x; answers that differ between the runs: {differing} of {len(prompts)}"
    (out / "continuous_batching.md").write_text("\n".join(table) + f"\n\n{summary}\n")
    print("\n".join(table), "", summary, sep="\n")


if __name__ == "__main__":
    main()

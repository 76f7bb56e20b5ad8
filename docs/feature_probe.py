"""How much do a target's stored hidden states tell about the next token, beyond the token itself?

A teacher-forced probe on the output of `pard regenerate --store-features`: a small MLP head (no attention) learns
x_{t+1} from the target's embedding of x_t alone, then from it plus the stored feature of x_t (h_{t-1}, each layer
normalised to unit RMS, as the feature adapter reads it), and reports the held-out share of positions where it
agrees with the target's own next token (the regenerated text is the target's greedy output). What the README's
*Drafts that read the target* quotes for zoo:large:

    python docs/feature_probe.py runs/zoo/pard-features-data/regenerated-by-large.jsonl zoo:large
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from pard import load_model
from pard.feature_store import FeatureStore
from pard.target_features import unit_rms


def positions(data: str):
    """(token x_t, feature row of x_t, label x_{t+1}) for every answer position with a stored feature."""
    tokens, rows, labels = [], [], []
    with open(data) as f:
        for line in f:
            for span in json.loads(line).get("target_features", []):
                ids, offset, row0 = span["tokens"], span["offset"], span["row"]
                for i in range(len(ids) - 1):  # position offset + i; its feature is row offset + i - 1
                    if offset + i >= 1:
                        tokens.append(ids[i]), rows.append(row0 + offset + i - 1), labels.append(ids[i + 1])
    return torch.tensor(tokens), np.array(rows), torch.tensor(labels)


def agreement(x: torch.Tensor, y: torch.Tensor, vocab: int, steps: int, split: int) -> float:
    head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 512), torch.nn.GELU(), torch.nn.Linear(512, vocab))
    optimizer = torch.optim.AdamW(head.parameters(), 2e-3)
    for _ in range(steps):
        batch = torch.randint(0, split, (1024,))
        loss = F.cross_entropy(head(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(x[split:]).argmax(-1) == y[split:]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a JSONL written by `pard regenerate --store-features`")
    parser.add_argument("target", help="the target that wrote it (its input embeddings are read)")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.manual_seed(0)
    store = FeatureStore(args.data)
    layers = store.header["layers"]
    tokens, rows, labels = positions(args.data)
    model = load_model(args.target, dtype="float32", device="cpu")
    embedded = model.get_input_embeddings().weight.detach()[tokens]  # (N, H)
    features = unit_rms(store.rows(rows), len(layers))  # (N, L, H), as the feature adapter reads them
    split = int(len(labels) * 0.8)
    print(f"{len(labels)} positions (held out: the last {len(labels) - split})")
    started = time.perf_counter()
    variants = {"embedding of x_t only": embedded,
                f"embedding + h_(t-1) at layer {layers[0]}": torch.cat([embedded, features[:, 0]], 1)}
    if len(layers) > 1:
        variants[f"embedding + h_(t-1) at layers {', '.join(map(str, layers))}"] = torch.cat(
            [embedded, features.flatten(1)], 1)
    for name, x in variants.items():
        share = agreement(x, labels, model.config.vocab_size, args.steps, split)
        print(f"{name}: agrees with the target's next token at {share:.3f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

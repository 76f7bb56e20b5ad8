"""How much do a target's stored hidden states tell about the next token, beyond the token itself?

A teacher-forced probe on the output of `pard regenerate --store-features`: a small MLP head (no attention) learns
x_{t+1} from the target's embedding of x_t alone, then from it plus the stored feature of x_t (h_{t-1}, each layer
normalised to unit RMS, as the feature adapter reads it), and reports the held-out share of positions where it
agrees with the target's own next token (the regenerated text is the target's greedy output). What the README's
*Drafts that read the target* quotes for zoo:large:

    python docs/feature_probe.py runs/zoo/pard-features-data/regenerated-by-large.jsonl zoo:large

``--train OTHER.jsonl [...]`` fits the heads on other regenerations (the same layers stored) and scores them on all
of DATA: the SmolLM2 section's calibration, a head fitted on the cpu recipe's answers and scored on unseen ones.
A teacher-forced one (answers the target read rather than wrote) trains on the target's stored top-1.

With ``--draft DRAFT``, the question a feature draft actually faces: beyond what the *draft* already knows. The
draft's own last state at x_t (teacher-forced over the records as training reads them, one per sequence) is read
through its own head, alone and plus a late term from the stored feature of x_t (standardised per dimension; a
linear map, or a small MLP, zero-initialised and trained on four fifths of the records); the held-out fifth
reports how often each agrees with the target's next token (``--steps 0``: no late term). A feature draft is also
scored as it decodes, reading the stored states through its own adapter. Run it on answers the draft was not
trained on: on its own training text the draft's state already holds what it memorised. What the README's SmolLM2
feature section quotes (its answers to held-out stdlib requests and GSM8K questions 1000+):

    python docs/feature_probe.py runs/ab/probe-answers.jsonl zoo:smollm2 --draft zoo:smollm2-pard --steps 1000
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
from pard.target_features import adapter_of, standardisation, unit_rms


def positions(data: str):
    """(token x_t, feature row of x_t, label) for every answer position with a stored feature. The label is the
    target's next token: x_{t+1} in its own (greedy) answers, its stored top-1 where it read an answer it did not
    write (``pard regenerate --teacher-force --top-logprobs 1``)."""
    tokens, rows, labels = [], [], []
    with open(data) as f:
        for line in f:
            record = json.loads(line)
            forced = record.get("teacher_forced", False)
            tops = record.get("top_logprobs") if forced else None
            if forced and not tops:
                raise SystemExit(f"{data}: a teacher-forced record without --top-logprobs has no labels to probe")
            for n, span in enumerate(record.get("target_features", [])):
                # rows cover positions 0 .. T-2 of prompt + completion: the prompt holds rows + 1 - len(ids) tokens
                ids, row0 = span["tokens"], span["row"]
                offset = span["rows"] + 1 - len(ids)
                following = [row[0] for row in tops[n]["ids"]] if forced else ids  # following[i + 1]: the label
                for i in range(len(ids) - 1):  # position offset + i; its feature is row offset + i - 1
                    if offset + i >= 1:
                        tokens.append(ids[i]), rows.append(row0 + offset + i - 1), labels.append(following[i + 1])
    return torch.tensor(tokens), np.array(rows), torch.tensor(labels)


def agreement(x: torch.Tensor, y: torch.Tensor, steps: int, split: int) -> float:
    """An MLP head over the tokens the first ``split`` labels use (a held-out label outside them counts as a miss:
    a head over the whole vocabulary costs 5x the time and learns nothing about tokens it never sees)."""
    vocab, y_train = torch.unique(y[:split], return_inverse=True)
    head = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 512), torch.nn.GELU(), torch.nn.Linear(512, len(vocab)))
    optimizer = torch.optim.AdamW(head.parameters(), 2e-3)
    for _ in range(steps):
        batch = torch.randint(0, split, (1024,))
        loss = F.cross_entropy(head(x[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (vocab[head(x[split:]).argmax(-1)] == y[split:]).float().mean().item()


def draft_positions(data: str, draft, tokenizer, store=None, max_seq_len: int = 2048):
    """(draft state at x_t (B, H), feature row of x_t, label x_{t+1}, record) for each answer position with a
    stored feature and an answer token after it. With ``store``, a feature draft reads the stored states through
    its adapter, as it decodes (token embedding + scale W n(f)); without, it runs plain."""
    from pard.feature_store import open_feature_stores
    from pard.training.config import DataConfig
    from pard.training.data import TARGET_FEATURE, load_training_sequences

    _, offsets, _ = open_feature_stores([data])
    chunks = load_training_sequences([data], tokenizer, DataConfig(max_seq_len=max_seq_len, assistant_only=True,
                                                                   packing=False), 1, feature_offsets=offsets)
    states, rows, labels, records = [], [], [], []
    with torch.no_grad():
        for index, chunk in enumerate(chunks):
            ids, row = torch.tensor(chunk["input_ids"]), np.asarray(chunk[TARGET_FEATURE])
            keep = np.nonzero((row[:-1] >= 0) & np.asarray(chunk["trainable"][1:], dtype=bool))[0]  # positions t
            embedded = draft.get_input_embeddings()(ids)  # (T, H)
            if store is not None:
                feature = torch.zeros(len(ids), store.header["row_size"])  # (T, F): zero where none is stored
                feature[row >= 0] = store.rows(row[row >= 0]).float()
                embedded = embedded + adapter_of(draft)(feature)
            hidden = draft.model(inputs_embeds=embedded[None]).last_hidden_state[0]  # (T, H), after the final norm
            states.append(hidden[keep]), rows.append(row[keep]), labels.append(ids[keep + 1])
            records.append(torch.full((len(keep),), index))
    return torch.cat(states), np.concatenate(rows), torch.cat(labels), torch.cat(records)


class LateTerm(torch.nn.Module):
    """state + B(f): a linear map, or an MLP with ``hidden`` units; zero at the start (the draft alone)."""

    def __init__(self, features: int, width: int, hidden: int = 0):
        super().__init__()
        first = [torch.nn.Linear(features, hidden), torch.nn.GELU()] if hidden else []
        self.map = torch.nn.Sequential(*first, torch.nn.Linear(hidden or features, width))
        torch.nn.init.zeros_(self.map[-1].weight), torch.nn.init.zeros_(self.map[-1].bias)

    def forward(self, state: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return state + self.map(feature)


def draft_agreement(draft, tokenizer, args, store) -> None:
    states, rows, labels, records = draft_positions(args.data, draft, tokenizer)
    features = store.rows(rows).float()
    mean, inv_std = standardisation(features)
    features = (features - mean) * inv_std  # (N, F), as the feature adapter standardises them
    held = torch.randperm(int(records.max()) + 1)[records] % 5 == 0  # a random fifth of the records
    train, test = torch.nonzero(~held)[:, 0], torch.nonzero(held)[:, 0]
    head = draft.get_output_embeddings()
    reduced = hasattr(head, "to_subset")  # a draft-vocabulary head: trained over its own tokens

    def agrees(state_of, index) -> float:
        """Share of positions ``index`` where the head over ``state_of(i)`` (states of positions i) picks the label."""
        head.eval()
        with torch.no_grad():
            predicted = torch.cat([head(state_of(i)).argmax(-1) for i in index.split(4096)])
        return (predicted == labels[index]).float().mean().item()

    print(f"{len(labels)} positions in {int(records.max()) + 1} records (held out: {len(test)})")
    everything = torch.arange(len(labels))
    print(f"draft alone, on all positions: agrees with the target's next token at "
          f"{agrees(lambda i: states[i], everything):.3f}")
    if adapter_of(draft) is not None:  # the feature draft as it decodes: the states through its own adapter
        read = draft_positions(args.data, draft, tokenizer, store)[0]
        for where, index in (("held-out fifth", test), ("all positions", everything)):
            print(f"draft reading the target's states through its adapter, on the {where}: agrees with the "
                  f"target's next token at {agrees(lambda i: read[i], index):.3f}", flush=True)
    late_terms = (("+ late linear term", 0), ("+ late MLP term (256)", 256)) if args.steps else ()
    for name, hidden in (("draft alone", None), *late_terms):
        late = LateTerm(features.shape[1], states.shape[1], hidden or 0)
        if hidden is not None:
            optimizer = torch.optim.AdamW(late.parameters(), 1e-3)
            head.train(reduced)
            for _ in range(args.steps):
                batch = train[torch.randint(0, len(train), (1024,))]
                target = head.to_subset(labels[batch], -100) if reduced else labels[batch]
                loss = F.cross_entropy(head(late(states[batch], features[batch])), target, ignore_index=-100)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        share = agrees(lambda i, late=late: late(states[i], features[i]), test)
        print(f"{name}: agrees with the target's next token at {share:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a JSONL written by `pard regenerate --store-features`")
    parser.add_argument("target", help="the target that wrote it (its input embeddings are read)")
    parser.add_argument("--steps", type=int, default=1500, help="each head's training steps (--draft: 0 fits no late "
                                                                "term)")
    parser.add_argument("--draft", help="probe beyond this draft's own last state instead (a PARD draft of target)")
    parser.add_argument("--train", nargs="+", help="train the heads on these regenerations' positions (the same "
                                                   "layers stored) and score them on all of DATA (default: on DATA's "
                                                   "first four fifths)")
    args = parser.parse_args()
    torch.manual_seed(0)
    store = FeatureStore(args.data)
    if args.draft:
        from pard import load_tokenizer

        draft = load_model(args.draft, dtype="float32", device="cpu").eval().requires_grad_(False)
        return draft_agreement(draft, load_tokenizer(args.target), args, store)
    layers = store.header["layers"]
    files = [*(args.train or []), args.data]  # trained on all but the last (or its first four fifths), scored on it
    read = [positions(path) for path in files]
    tokens, labels = torch.cat([r[0] for r in read]), torch.cat([r[2] for r in read])
    features = torch.cat([FeatureStore(path).rows(r[1]) for path, r in zip(files, read)])
    model = load_model(args.target, dtype="float32", device="cpu")
    embedded = model.get_input_embeddings().weight.detach()[tokens]  # (N, H)
    features = unit_rms(features, len(layers))  # (N, L, H), as the feature adapter reads them
    split = len(labels) - len(read[-1][2]) if args.train else int(len(labels) * 0.8)
    print(f"{len(labels)} positions (trained on {split}, held out: the last {len(labels) - split})")
    started = time.perf_counter()
    # each variant's inputs are built when its turn comes: at 1M positions (N, 3 H) is 7 GB
    variants = {"embedding of x_t only": lambda: embedded,
                f"embedding + h_(t-1) at layer {layers[0]}": lambda: torch.cat([embedded, features[:, 0]], 1)}
    if len(layers) > 1:
        variants[f"embedding + h_(t-1) at layers {', '.join(map(str, layers))}"] = lambda: torch.cat(
            [embedded, features.flatten(1)], 1)
    for name, inputs in variants.items():
        share = agreement(inputs(), labels, args.steps, split)
        print(f"{name}: agrees with the target's next token at {share:.3f}")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

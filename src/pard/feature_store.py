"""The target's hidden states kept next to regenerated records, for training feature drafts without the target.

``pard regenerate --output X.jsonl --store-features LAYERS`` writes, beside ``X.jsonl``:

* ``X.jsonl.features``: the rows, raw little-endian bfloat16, F = hidden size x number of layers values each,
  appended in the order of the records (a streaming file: nothing is rewritten);
* ``X.jsonl.features.json``: what the rows are (the target's record, as a feature draft stores it: layers, hidden
  size, model type, depth, weights' fingerprint; the row width and dtype).

A record's field ``target_features`` lists, per completion (as ``top_logprobs`` does), where it sits (assistant
``message`` index or plain-text ``offset``), the digest of the ``prompt`` tokens, the generated ``tokens``, and its
rows ``[row, row + rows)``: the hidden states at positions 0 .. T-2 of the T tokens prompt + completion (the state
at position t is the feature of token t + 1; the last token's own state is never computed). The JSONL is the
source of truth: rows past the last record's (a crash between the two writes) are cut when a run resumes, so a
resumed file equals an uninterrupted one byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .files import atomic_write_text
from .target_features import features_read

FEATURES_FIELD = "target_features"  # the record field regenerate writes
DATA_SUFFIX, HEADER_SUFFIX = ".features", ".features.json"


def data_path(output: str | Path) -> Path:
    return Path(f"{output}{DATA_SUFFIX}")


def header_path(output: str | Path) -> Path:
    return Path(f"{output}{HEADER_SUFFIX}")


def read_header(output: str | Path) -> dict | None:
    path = header_path(output)
    return json.loads(path.read_text()) if path.exists() else None


class FeatureWriter:
    """Appends rows to ``output``'s feature file, after the ``end_row`` rows the existing records reference (orphan
    rows past them are cut). ``append`` returns the first row index of what it wrote."""

    def __init__(self, output: str | Path, header: dict, end_row: int):
        self.path = data_path(output)
        self.row_size = int(header["row_size"])
        existing = read_header(output)
        if existing is not None and existing != header:
            raise DataError(f"{output}: its stored features are {_describe(existing)}; this run would store "
                            f"{_describe(header)}: resume with the same --store-features and target, or choose "
                            "another --output")
        if existing is None:
            atomic_write_text(header_path(output), json.dumps(header, indent=2) + "\n")
        size = end_row * self.row_size * 2
        if self.path.exists() and self.path.stat().st_size < size:
            raise DataError(f"{self.path}: holds fewer rows than {output}'s records reference (truncated?); move "
                            "both away and regenerate")
        self.file = open(self.path, "ab")
        self.file.truncate(size)  # rows a crash left behind without their record
        self.next_row = end_row

    def append(self, rows: torch.Tensor) -> int:
        """rows (T, F) -> written as bfloat16; returns the index of the first."""
        if rows.shape[-1] != self.row_size:
            raise ValueError(f"feature rows of width {rows.shape[-1]}, the store's are {self.row_size}")
        first = self.next_row
        self.file.write(rows.to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes())
        self.next_row += len(rows)
        return first

    def sync(self) -> None:
        """Flush and fsync: called before the records that reference the rows are written."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _describe(header: dict) -> str:
    return f"layers {header['layers']} of {header.get('target') or header['model_type']}"


class FeatureStore:
    """Read access to one feature file: ``rows(index)`` -> float32 (len(index), F), memory-mapped."""

    def __init__(self, output: str | Path):
        self.header = read_header(output)
        if self.header is None:
            raise DataError(f"{output}: no stored features ({header_path(output).name} is missing): write the data "
                            "with pard regenerate --store-features LAYERS")
        self.row_size = int(self.header["row_size"])
        path = data_path(output)
        count = path.stat().st_size // (2 * self.row_size) if path.exists() else 0
        self.data = (np.memmap(path, dtype="<i2", mode="r", shape=(count, self.row_size)) if count
                     else np.zeros((0, self.row_size), dtype="<i2"))

    def __len__(self) -> int:
        return len(self.data)

    def rows(self, index: np.ndarray) -> torch.Tensor:
        raw = torch.from_numpy(np.ascontiguousarray(self.data[index]).astype(np.int16))
        return raw.view(torch.bfloat16).float()


class FeatureStores:
    """Several feature files as one row space (the training data's sources, in order): global row = a file's
    offset + its row. ``gather(rows (...,))`` -> (..., F) float32 (only ``columns`` of each row, when given: a
    subset of the stored layers), zeros where a row is -1."""

    def __init__(self, stores: list[FeatureStore], columns: np.ndarray | None = None):
        self.stores = stores
        widths = {s.row_size for s in stores}
        if len(widths) > 1:
            raise DataError(f"the training data's stored features have different widths ({sorted(widths)}): "
                            "store the same layers of the same target for every source")
        self.columns = columns
        self.row_size = len(columns) if columns is not None else widths.pop()
        self.offsets = np.cumsum([0] + [len(s) for s in stores])

    def gather(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows)
        out = torch.zeros(*rows.shape, self.row_size)
        flat, target = rows.reshape(-1), out.view(-1, self.row_size)
        for i, store in enumerate(self.stores):
            pick = np.nonzero((flat >= self.offsets[i]) & (flat < self.offsets[i + 1]))[0]
            if len(pick):
                values = store.rows(flat[pick] - self.offsets[i])
                target[torch.from_numpy(pick)] = values if self.columns is None else values[:, self.columns]
        return out


def align_features(ids, completions, offset: int) -> list[int]:
    """Per token t of ``ids``, the global row of its feature (the target's hidden state at position t - 1) or -1.

    completions: (start, entry) pairs as regenerate writes them (``prompt`` digest, generated ``tokens``, ``row``,
    ``rows``), ``start`` the index in ``ids`` of the completion's first token; ``offset`` the file's first global
    row. A token gets its feature only while everything before it is what the target read: the prompt (its
    digest) and the generated tokens up to it.
    """
    from .training.stored_teacher import prompt_digest

    out = [-1] * len(ids)
    for start, entry in completions:
        if start > len(ids) or prompt_digest(ids[:start]) != entry["prompt"]:
            continue  # conditioned on another history
        tokens, first, count = entry["tokens"], entry["row"], entry["rows"]
        for t in range(1, len(ids)):
            if t - 1 >= count:
                break
            if t - 1 >= start and (t - 1 - start >= len(tokens) or ids[t - 1] != tokens[t - 1 - start]):
                break  # the training text left what the target wrote: later states saw another prefix
            out[t] = offset + first + t - 1
    return out


def open_feature_stores(specs: list[str], layers: list[int] | None = None
                        ) -> tuple[FeatureStores, dict[str, int], dict]:
    """The stored features of the training sources ``specs``: the stores as one row space, each source's first
    global row (-1 for a source without stored features: original data mixed in), and the target's record (what
    the feature draft will store). Sources must agree on the target and layers; ``layers`` picks some of them."""
    stores, offsets, records = [], {}, {}
    total = 0
    for spec in specs:
        header = read_header(spec) if Path(spec).is_file() else None
        if header is None:
            offsets[spec] = -1
            continue
        store = FeatureStore(spec)
        stores.append(store)
        offsets[spec], total = total, total + len(store)
        records[spec] = {k: v for k, v in header.items() if k not in ("row_size", "dtype", "scale")}
    if not stores:
        raise DataError("--target-features data: none of the training data has stored target features (write it "
                        "with pard regenerate --store-features LAYERS)")
    if len({features_read(r) for r in records.values()}) > 1:
        which = ", ".join(f"{spec}: layers {r['layers']}" for spec, r in records.items())
        raise DataError(f"the training data's stored features come from different targets or layers ({which}); "
                        "store the same layers of the same target for every source")
    record = next(iter(records.values()))
    columns = None
    if layers is not None:
        missing = [layer for layer in layers if layer not in record["layers"]]
        if missing:
            raise DataError(f"--feature-layers {missing} were not stored (the data has layers {record['layers']})")
        size = record["hidden_size"]
        columns = np.concatenate([np.arange(size) + record["layers"].index(layer) * size for layer in layers])
        record = {**record, "layers": list(layers)}
    return FeatureStores(stores, columns), offsets, record

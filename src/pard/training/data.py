"""Training data: files or hub datasets -> records -> token sequences (with trainable-token masks) -> chunks.

Records are plain text (``text`` field, configurable) or chat (``messages``: a list of ``{"role", "content"}``,
rendered with the tokenizer's chat template). Everything goes through the ``datasets`` library; local JSON/JSONL
files are checked line by line first so a malformed line is reported with its file and line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import DataError
from ..feature_store import FEATURES_FIELD, align_features
from ..prompts import render_chat
from .config import DataConfig
from .stored_teacher import RECORD_FIELD, TEACHER_IDS, TEACHER_LOGPROBS, align_rows

TARGET_FEATURE = "target_feature"  # per token: the global row of its stored target feature, -1 for none

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def load_records(spec: str, split: str = "train") -> datasets.Dataset:
    """One data source: a local file (.json/.jsonl/.parquet/.txt), ``stdlib[:train|heldout]``, or a hub dataset
    name (``name`` or ``name:config``)."""
    if spec == "stdlib" or spec.startswith("stdlib:"):
        from ..corpus import stdlib_records

        return datasets.Dataset.from_list(stdlib_records(spec.partition(":")[2] or "train"))
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise DataError(f"{spec}: is a directory; pass the data files themselves")
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{spec}: unsupported file type {path.suffix!r}; use {', '.join(_BUILDERS)}")
        if builder == "json":
            check_json_file(path)
        elif builder == "text":
            read_utf8(path)
            if path.stat().st_size == 0:
                raise DataError(f"{spec}: the file is empty")
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    name, _, config = spec.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # the hub client raises many types; the user needs one line
        raise DataError(f"could not load dataset {spec!r}: not a local file, and loading it from the hub failed "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err


def read_utf8(path: Path) -> str:
    """The file's text; a file that is not UTF-8 fails with ``file:line`` of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); convert the file to UTF-8") \
            from None


def check_json_file(path: Path) -> None:
    """Fail with ``file:line`` on the first malformed record; fail on files without records."""
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
        if not records:
            raise DataError(f"{path}: the JSON array is empty")
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: malformed JSON line ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")


def tokenize_records(records: datasets.Dataset, tokenizer, config: DataConfig, source: str,
                     stored_teacher: bool = False, feature_offset: int | None = None) -> datasets.Dataset:
    """Records -> ``input_ids`` and ``trainable`` (per-token bool: is this token a training target); with
    ``stored_teacher``, also the target's stored distributions per token (:mod:`.stored_teacher`; none for records
    without them, e.g. original data mixed with regenerated); with ``feature_offset`` (not None), the global row of
    each token's stored target feature, -1 where there is none (:func:`pard.feature_store.align_features`; a
    source without stored features has offset -1: every token -1)."""
    columns = records.column_names
    if config.messages_field in columns:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{source}: chat records ('{config.messages_field}') need a tokenizer with a chat template")
        fn = _ChatEncoder(tokenizer, config, source, stored_teacher, feature_offset)
    elif config.text_field in columns:
        fn = _TextEncoder(tokenizer, config, source, stored_teacher, feature_offset)
    else:
        raise DataError(
            f"{source}: records have neither a '{config.text_field}' nor a '{config.messages_field}' field "
            f"(fields: {', '.join(columns) or 'none'}); choose the field with --text-field"
        )
    features = None
    if stored_teacher or feature_offset is not None:  # declared: all-empty rows would be typed list<null>
        columns_types = {"input_ids": datasets.List(datasets.Value("int64")),
                         "trainable": datasets.List(datasets.Value("bool"))}
        if stored_teacher:
            columns_types[TEACHER_IDS] = datasets.List(datasets.List(datasets.Value("int64")))
            columns_types[TEACHER_LOGPROBS] = datasets.List(datasets.List(datasets.Value("float32")))
        if feature_offset is not None:
            columns_types[TARGET_FEATURE] = datasets.List(datasets.Value("int64"))
        features = datasets.Features(columns_types)
    return records.map(fn, with_indices=True, remove_columns=columns, features=features,
                       desc=f"tokenizing {source}")


def _feature_rows(ids, completions, offset: int | None) -> dict:
    if offset is None:
        return {}
    return {TARGET_FEATURE: align_features(ids, completions, offset) if offset >= 0 else [-1] * len(ids)}


NOT_PREFIX_CONSISTENT = ("the chat template does not render conversations prefix-consistently, so an assistant "
                         "turn's tokens cannot be told from the rest")


def document_ids(tokenizer, text: str) -> list[int]:
    """A plain text's training tokens: its tokenization, then the end of the document where the tokenizer has one
    (documents end, so the draft learns to predict the end)."""
    ids = list(tokenizer(text)["input_ids"])
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def assistant_spans(tokenizer, messages: list[dict], ids: list[int]) -> dict[int, tuple[int, int]] | None:
    """Message index -> [start, end) of each assistant turn's tokens in ``ids`` (the whole conversation rendered),
    by prefix differences: render the conversation up to the turn (with the generation prompt) and up to its end;
    the tokens in between are that turn, end of turn included. None when the template's renderings of prefixes are
    not prefixes of the whole (e.g. one that drops earlier turns' reasoning): then no turn can be located."""
    spans = {}
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True)
        after = render_chat(tokenizer, messages[: i + 1])
        if ids[: len(after)] != after or after[: len(before)] != before:
            return None
        spans[i] = (len(before), len(after))
    return spans


@dataclass
class _TextEncoder:
    tokenizer: object
    config: DataConfig
    source: str
    stored_teacher: bool = False
    feature_offset: int | None = None

    def __call__(self, record, index):
        text = record[self.config.text_field]
        if not isinstance(text, str):
            raise DataError(f"{self.source}: record {index} has no text in '{self.config.text_field}'")
        ids = document_ids(self.tokenizer, text)
        out = {"input_ids": ids, "trainable": [True] * len(ids)}
        if self.stored_teacher:  # a continuation starts after its prompt's tokens
            out.update(align_rows(ids, ((e["offset"], e) for e in record.get(RECORD_FIELD) or [])))
        out.update(_feature_rows(ids, [(e["offset"], e) for e in record.get(FEATURES_FIELD) or []],
                                 self.feature_offset))
        return out


@dataclass
class _ChatEncoder:
    tokenizer: object
    config: DataConfig
    source: str
    stored_teacher: bool = False
    feature_offset: int | None = None

    def __call__(self, record, index):
        messages = record[self.config.messages_field]
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"{self.source}: record {index} has no valid messages (need role and content)")
        ids = render_chat(self.tokenizer, messages)
        out = {"input_ids": ids, "trainable": [True] * len(ids)}
        if not (self.config.assistant_only or self.stored_teacher or self.feature_offset is not None):
            return out
        spans = assistant_spans(self.tokenizer, messages, ids)
        if spans is None:
            raise DataError(f"{self.source}: record {index}: {NOT_PREFIX_CONSISTENT}; drop --assistant-only"
                            + (" and --distill-from data" if self.stored_teacher else ""))
        if self.config.assistant_only:
            out["trainable"] = [False] * len(ids)
            for start, end in spans.values():
                out["trainable"][start:end] = [True] * (end - start)
        if self.stored_teacher:  # a regenerated turn starts where the template's generation prompt ends
            out.update(align_rows(ids, ((spans[e["message"]][0], e) for e in record.get(RECORD_FIELD) or []
                                        if e["message"] in spans)))
        out.update(_feature_rows(ids, [(spans[e["message"]][0], e) for e in record.get(FEATURES_FIELD) or []
                                       if e["message"] in spans], self.feature_offset))
        return out


def chunk_sequences(tokenized: datasets.Dataset, config: DataConfig, min_len: int) -> datasets.Dataset:
    """Packing: concatenate and cut into max_seq_len chunks (a shorter tail is kept if >= min_len tokens).
    Without packing: truncate each record to max_seq_len and drop records shorter than min_len. Every per-token
    column (``input_ids``, ``trainable``, stored teacher rows) is cut the same way."""
    size = config.max_seq_len

    def pack(batch):
        flat = {name: [t for seq in column for t in seq] for name, column in batch.items()}
        starts = [s for s in range(0, len(flat["input_ids"]), size) if len(flat["input_ids"]) - s >= min_len]
        return {name: [tokens[s : s + size] for s in starts] for name, tokens in flat.items()}

    def truncate(batch):
        keep = [i for i, seq in enumerate(batch["input_ids"]) if len(seq) >= min_len]
        return {name: [column[i][:size] for i in keep] for name, column in batch.items()}

    fn = pack if config.packing else truncate
    return tokenized.map(fn, batched=True, batch_size=1000, features=tokenized.features,
                         desc="packing" if config.packing else "filtering")


def load_training_sequences(specs: list[str], tokenizer, config: DataConfig, num_draft_tokens: int,
                            stored_teacher: bool = False, feature_offsets: dict[str, int] | None = None):
    """All sources -> one dataset of chunks with ``input_ids`` and ``trainable`` (and, with ``stored_teacher``, the
    target's stored rows; with ``feature_offsets`` (spec -> its first global feature row, -1 for a source without
    stored features), each token's feature row); clear errors when nothing is usable. A chunk needs at least
    K + 1 tokens so every subtask has a position."""
    if not specs:
        raise DataError("no training data given")
    min_len = num_draft_tokens + 1
    parts = []
    for spec in specs:
        records = load_records(spec, config.split)
        if len(records) == 0:
            raise DataError(f"{spec}: no records")
        offset = feature_offsets.get(spec, -1) if feature_offsets is not None else None
        parts.append(tokenize_records(records, tokenizer, config, spec, stored_teacher, offset))
    tokenized = datasets.concatenate_datasets(parts)
    chunks = chunk_sequences(tokenized, config, min_len)
    if len(chunks) == 0:
        longest = max(len(ids) for ids in tokenized["input_ids"])
        what = "the data has" if config.packing else "every record has"
        raise DataError(
            f"{what} fewer than K + 1 = {min_len} tokens (longest record: {longest}); PARD training with K = "
            f"{num_draft_tokens} needs longer sequences (or a smaller -k)"
        )
    return chunks

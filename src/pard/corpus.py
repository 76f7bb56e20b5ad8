"""The Python standard library's source code as a corpus every Python installation carries.

Files are split into ``train`` and ``heldout`` by a hash of their path relative to the stdlib root, so the split
is fixed (a file is held out on every machine that has it) and never depends on which other files exist. Tests,
vendored site-packages and IDLE's tests are excluded.
"""

from __future__ import annotations

import hashlib
import sysconfig
import textwrap
from pathlib import Path

HELDOUT_PERCENT = 5
SPLITS = ("train", "heldout")
_EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    digest = hashlib.sha1(relative_path.encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT else "train"


def stdlib_files(split: str = "train") -> list[Path]:
    """Sorted stdlib ``.py`` files of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown stdlib split {split!r}; choose one of {SPLITS}")
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.intersection(rel.parts[:-1]):
            continue
        if split_of(rel.as_posix()) == split:
            files.append(path)
    return files


def stdlib_records(split: str = "train") -> list[dict]:
    """``{"id": relative path, "text": source}`` per file (undecodable files skipped)."""
    root = stdlib_root()
    records = []
    for path in stdlib_files(split):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip():
            records.append({"id": path.relative_to(root).as_posix(), "text": text})
    return records


CHAT_TASKS = (
    "Write a Python function `{name}({args})` that {summary}",
    "Explain what the following Python function does:\n\n```python\n{source}\n```",
    "Write pytest unit tests for this function:\n\n```python\n{source}\n```",
    "Rewrite this function to be easier to read, then explain what you changed:\n\n```python\n{source}\n```",
)
MAX_FUNCTION_LINES = 40


def documented_functions(split: str = "train") -> list[dict]:
    """Every documented public function of ``split`` at most MAX_FUNCTION_LINES long, in file order: ``where``
    (path:line), ``name``, ``args``, ``summary`` (its docstring's first line, without the final period) and
    ``source`` (dedented, decorators included)."""
    import ast

    functions = []
    for record in stdlib_records(split):
        try:
            tree = ast.parse(record["text"])
        except (SyntaxError, ValueError):
            continue
        lines = record["text"].splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if not doc or length > MAX_FUNCTION_LINES or not doc.split("\n")[0].strip():
                continue
            first = node.lineno - 1 - len(node.decorator_list)
            functions.append({
                "where": f"{record['id']}:{node.lineno}", "name": node.name, "args": ast.unparse(node.args),
                "summary": doc.split("\n")[0].strip().rstrip("."),
                "source": textwrap.dedent("\n".join(lines[first : node.end_lineno])),
            })
    return functions


def _thinned(records: list[dict], count: int) -> list[dict]:
    step = max(len(records) / count, 1.0)
    return [records[int(i * step)] for i in range(min(count, len(records)))]


def _write_it(function: dict) -> str:
    summary = function["summary"]
    return CHAT_TASKS[0].format(name=function["name"], args=function["args"],
                                summary=summary[:1].lower() + summary[1:] + ".")


def stdlib_chat_prompts(split: str = "train", count: int = 2000) -> list[dict]:
    """Coding requests about the stdlib's own functions, as chat records a target can answer (``pard regenerate``).

    Every :func:`documented_functions` entry of ``split`` becomes one request of one of CHAT_TASKS (chosen by a hash
    of its location, so the set is fixed), in ``{"id", "messages"}`` records whose assistant turn is empty: a prompt
    set every Python installation can rebuild offline, disjoint from the benchmarks (HumanEval, GSM8K, Spec-Bench).
    Evenly thinned to ``count``.
    """
    prompts = []
    for function in documented_functions(split):
        task = CHAT_TASKS[hashlib.sha1(function["where"].encode()).digest()[0] % len(CHAT_TASKS)]
        text = _write_it(function) if task == CHAT_TASKS[0] else task.format(source=function["source"])
        prompts.append({"id": function["where"], "messages": [{"role": "user", "content": text},
                                                              {"role": "assistant", "content": ""}]})
    return _thinned(prompts, count)


def stdlib_chat_answers(split: str = "train", count: int = 2000) -> list[dict]:
    """Every :func:`documented_functions` entry as a *write it* request answered with the function's own source
    (a fenced Python block): chat records with answers, for a target to read rather than write (``pard regenerate
    --teacher-force``). Evenly thinned to ``count``; ids ``path:line:source``."""
    return _thinned([{"id": f"{f['where']}:source", "messages": [
        {"role": "user", "content": _write_it(f)},
        {"role": "assistant", "content": f"```python\n{f['source']}\n```"}]} for f in documented_functions(split)],
        count)

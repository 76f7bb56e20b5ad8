"""The Python standard library's source code as a corpus every Python installation carries.

Files are split into ``train`` and ``heldout`` by a hash of their path relative to the stdlib root, so the split
is fixed (a file is held out on every machine that has it) and never depends on which other files exist. Tests,
vendored site-packages and IDLE's tests are excluded.
"""

from __future__ import annotations

import hashlib
import sysconfig
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

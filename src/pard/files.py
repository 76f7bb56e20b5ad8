"""Writing the user's files safely: atomic writes, whole directories published at once, locks, and modes.

The promise: a command that refuses leaves the user's files byte-for-byte as they were, a command that fails
half-way leaves either the old file or the new one (never a torn one), and what we write has the permissions the
user's umask asks for (transformers' savers create 0600 files, which a vLLM server running as another user cannot
read).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidArgumentError, OutputError

STAGING = ".staging."  # hidden sibling directories of publish_dir: .NAME.staging.PID.RANDOM


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes a plain ``open`` would have given:
    0666 & ~umask for files, 0777 & ~umask for directories."""
    path = Path(path)
    mask = current_umask()
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if item.is_symlink():
            continue
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def check_output_dir(path: str | Path, *, overwrite: bool, what: str) -> None:
    """Refuse (before any work is done) an output directory we may not or cannot write.

    ``path`` may be missing or empty; a non-empty directory only with ``overwrite``; a file never. Its parent must
    be writable (checked now, not after hours of work).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"{path} exists and is not a directory; choose another {what}")
    if path.is_dir() and not is_empty_dir(path) and not overwrite:
        raise InvalidArgumentError(
            f"{path} is not empty; pass --overwrite to replace it, or choose another {what}"
        )
    check_writable(path if path.is_dir() else existing_parent(path))


def check_writable(directory: Path) -> None:
    """Raise :class:`OutputError` unless a file can be created in ``directory``."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".pard-write-check.")
    except OSError as err:
        raise OutputError(f"cannot write to {directory}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)


def existing_parent(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (where creating it would start); it must be a directory."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {path}: {parent} is not a directory")
    return parent


@contextlib.contextmanager
def publish_dir(path: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Build a directory in a hidden sibling and move it to ``path`` only when the block succeeds.

    A failure (or Ctrl-C) inside the block leaves ``path`` exactly as it was. With ``overwrite`` an existing
    ``path`` is replaced as a whole (it is moved aside first, then deleted, so there is never a moment with half of
    each). Modes follow the umask.
    """
    path = Path(path)
    check_output_dir(path, overwrite=overwrite, what="--output")
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    # The process id in the name tells a later run whether the staging directory is still being built
    # (:func:`remove_stale_staging`): a process killed mid-build cannot clean up after itself.
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}{STAGING}{os.getpid()}."))
    try:
        yield staging
        apply_umask(staging)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.old."))
            os.replace(path, old / path.name)
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(directory: str | Path) -> list[Path]:
    """Delete the staging directories in ``directory`` whose building process is gone (killed mid-build: a
    de-quantized SmolLM2 is ~540 MB each); those of live processes are left alone. Returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for staging in directory.glob(f".*{STAGING}*"):
        pid = staging.name.rpartition(STAGING)[2].partition(".")[0]
        if staging.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path``.lock; a second process gets :class:`OutputError` at once (or, with
    ``wait``, blocks until the first is done: for shared caches, where the second process wants the result).

    The lock file is left behind (deleting it would race with a waiting process); it is empty and harmless.
    """
    import fcntl

    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise OutputError(f"another process is writing {what} {path} (lock {lock_path}); wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

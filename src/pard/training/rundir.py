"""The run-directory format of `pard train`: which files a run writes, how a run is recognised, resumed, finished.

    OUTPUT/
      pard_run.json           written before training starts: what this run is (model, data, K, r, r_min, ...)
      checkpoint-N/           the Trainer's checkpoints; each also holds pard_progress.json (tokens, seconds so far)
      pard_training.json      written last: the run finished; the final draft sits beside it
      config.json, model.safetensors, tokenizer files

Readers (export, the zoo, the benches) need only these names and :func:`last_complete_checkpoint`; nothing here
imports the Trainer or ``datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidArgumentError, OutputError
from ..files import atomic_write_text, check_writable, existing_parent

RUN_FILE = "pard_run.json"
TRAINING_INFO_FILE = "pard_training.json"
PROGRESS_FILE = "pard_progress.json"
CHECKPOINT_PREFIX = "checkpoint"  # the Trainer's PREFIX_CHECKPOINT_DIR
# What must match to resume: the COD layout (else the run is misrecorded) and how batches are drawn (else the rest
# of the run sees another data order than an uninterrupted run would).
RESUME_KEYS = ("num_draft_tokens", "retention", "min_retention", "max_seq_len", "group_by_length", "target_features",
               "feature_drop", "adapter_only")


def is_finished(output: str | Path) -> bool:
    return (Path(output) / TRAINING_INFO_FILE).exists()


def checkpoints(output: str | Path) -> list[Path]:
    return sorted(Path(output).glob(f"{CHECKPOINT_PREFIX}-*"))


def last_complete_checkpoint(output: str | Path) -> str | None:
    """The newest ``checkpoint-N`` whose trainer_state.json (the Trainer writes it after everything else) exists
    and parses: a checkpoint half-written when a run crashed is skipped, and the previous one is used."""
    steps = []
    for path in checkpoints(output):
        try:
            step = int(path.name.rsplit("-", 1)[1])
            json.loads((path / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        steps.append((step, path))
    return str(max(steps)[1]) if steps else None


def read_progress(checkpoint: str | Path | None) -> dict:
    """Cumulative counters saved with a checkpoint (empty for a fresh run or an old checkpoint)."""
    if checkpoint is None:
        return {}
    try:
        return json.loads((Path(checkpoint) / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def check_run_dir(output: str | Path, run: dict, *, resume: bool) -> str | None:
    """Check ``output`` before any training time is spent; return the checkpoint to resume from (or None).

    * a missing or empty directory starts a fresh run;
    * a directory of a previous run needs ``resume`` (else it is refused: its checkpoints would be clobbered), and
      the run's K, r, r_min and sequence length must match (a COD layout changed mid-run would be misrecorded);
    * a directory holding anything else is refused: training would overwrite the user's ``config.json``;
    * an unwritable directory is refused now, not at the first checkpoint.
    Changes nothing on disk: :func:`claim_run_dir` does, once the data and the model have loaded.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InvalidArgumentError(f"{output} exists and is not a directory; choose another --output")
    previous = _previous_run(output)
    if output.is_dir() and any(output.iterdir()) and previous is None:
        raise InvalidArgumentError(
            f"{output} holds files that are not a pard training run; choose an empty or new --output"
        )
    resume_from = None
    if previous is not None:
        if not resume:
            raise InvalidArgumentError(
                f"{output} already holds a training run; pass --resume to continue it, or choose another --output"
            )
        changed = {k: (previous[k], run[k]) for k in RESUME_KEYS if k in previous and previous[k] != run.get(k)}
        if changed:
            what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise InvalidArgumentError(f"cannot resume {output} with different settings ({what}); resume with the "
                                       "run's own settings, or start a new run in another --output")
        resume_from = last_complete_checkpoint(output)
    check_writable(output if output.is_dir() else existing_parent(output))
    return resume_from


def claim_run_dir(output: str | Path, run: dict) -> None:
    """Create ``output`` and record the run in it (``pard_run.json``, atomically) unless it is already recorded."""
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        if not (output / RUN_FILE).exists():
            atomic_write_text(output / RUN_FILE, json.dumps(run, indent=2) + "\n")
    except OSError as err:
        raise OutputError(f"cannot write to {output}: {err.strerror or err}") from None


def _previous_run(output: Path) -> dict | None:
    """What a previous run in ``output`` recorded, or None when ``output`` holds no run."""
    if (output / RUN_FILE).exists():
        return json.loads((output / RUN_FILE).read_text())
    if (output / TRAINING_INFO_FILE).exists():  # a run made before pard_run.json existed
        return json.loads((output / TRAINING_INFO_FILE).read_text())
    if checkpoints(output):
        return {}
    return None

"""Distillation from target distributions stored in the data (`pard regenerate --top-logprobs N`).

The distillation term needs P_target(. | x_0..x_p) at every trained position. Running the target over each batch
(``--distill-from MODEL``) costs a full target forward per step — on a CPU more than the draft's whole step. But
when the data was written by the target, those distributions were computed while it wrote: `pard regenerate`
keeps their N most likely tokens, and ``--distill-from data`` reads them instead. Three steps, one per function:

* :func:`align_rows` (tokenizing): the stored rows of one completion are attached to the tokens of the rendered
  training sequence only where that sequence is what the target saw and wrote. Its prefix must be the prompt the
  target completed (:func:`prompt_digest`: in a multi-turn chat a later turn was written after the *original*
  earlier turns, which the training text has replaced), and from the first token that differs from the completion
  (re-tokenizing decoded text may merge tokens differently) the rest has no row — a distribution conditioned on
  another prefix is not the one that position needs;
* :func:`gather_rows` (building a sample): a kept position p of a packed COD sample predicts x_{p+1}, so it reads
  the row of token p + 1 — for every subtask, as with a teacher forward (``loss.teacher_distributions``);
* ``loss.stored_kd_loss``: the KL from the stored top-N (renormalised) to the draft.

Per token t the row holds the target's distribution *of token t* (given x_0..x_{t-1}): ``ids`` and ``logprobs``,
N each, or empty where there is none. Arrays use id -1 for "no entry".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

RECORD_FIELD = "top_logprobs"  # the record field `pard regenerate --top-logprobs` writes
TEACHER_IDS, TEACHER_LOGPROBS = "teacher_ids", "teacher_logprobs"  # per-token columns of the tokenized data


def prompt_digest(ids: Sequence[int]) -> str:
    """A short fingerprint of a token sequence: what a completion's rows were conditioned on."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def align_rows(ids: Sequence[int], completions: Iterable[tuple[int, dict]]) -> dict[str, list[list]]:
    """Per token of ``ids`` (N,), the stored row of the target's distribution of that token, or empty lists.

    completions: (start, entry) pairs; ``entry`` as `pard regenerate` writes it (``prompt``: the digest of the
    prompt, ``tokens`` (T,), ``ids`` (T, n), ``logprobs`` (T, n)) and ``start`` the index in ``ids`` of its first
    token. An entry whose prompt is not ``ids[:start]`` contributes nothing.
    """
    top_ids: list[list[int]] = [[] for _ in ids]
    top_logprobs: list[list[float]] = [[] for _ in ids]
    for start, entry in completions:
        if prompt_digest(ids[:start]) != entry["prompt"]:
            continue  # conditioned on another history
        for j, token in enumerate(entry["tokens"]):
            t = start + j
            if t >= len(ids) or ids[t] != token:
                break  # from here on the training text is not what the target wrote
            top_ids[t], top_logprobs[t] = entry["ids"][j], entry["logprobs"][j]
    return {TEACHER_IDS: top_ids, TEACHER_LOGPROBS: top_logprobs}


def gather_rows(chunk: dict, label_index: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored rows at ``label_index`` (L,) — the source index of each packed position's label, position + 1 —
    as ids (L, width) int64 (-1 where there is no entry) and log-probabilities (L, width) float32 (-inf there)."""
    ids = np.full((len(label_index), width), -1, dtype=np.int64)
    logprobs = np.full((len(label_index), width), -np.inf, dtype=np.float32)
    rows_ids, rows_logprobs = chunk[TEACHER_IDS], chunk[TEACHER_LOGPROBS]
    for i, t in enumerate(label_index.tolist()):
        n = len(rows_ids[t]) if t < len(rows_ids) else 0
        if n:
            ids[i, :n], logprobs[i, :n] = rows_ids[t], rows_logprobs[t]
    return ids, logprobs


def coverage(chunks) -> tuple[int, int, int]:
    """(trained tokens with a stored row, trained tokens, the widest row's N) over the tokenized chunks."""
    covered = total = width = 0
    for chunk in chunks:
        for trainable, row in zip(chunk["trainable"], chunk[TEACHER_IDS]):
            total += bool(trainable)
            covered += bool(trainable and row)
            width = max(width, len(row))
    return covered, total, width


def gold_logprobs(chunk: dict) -> np.ndarray:
    """Per token t of a chunk, log p_target(x_t | x_<t) from its stored row: the logprob of x_t among the stored
    top-N; 0 where the token has no row (no information), and the row's smallest logprob where x_t is not in it
    (it had at most that)."""
    ids, rows_ids, rows_logprobs = chunk["input_ids"], chunk[TEACHER_IDS], chunk[TEACHER_LOGPROBS]
    out = np.zeros(len(ids), dtype=np.float64)
    for t, (token, row_ids, row_logprobs) in enumerate(zip(ids, rows_ids, rows_logprobs)):
        if row_ids:
            out[t] = row_logprobs[row_ids.index(token)] if token in row_ids else min(row_logprobs)
    return out

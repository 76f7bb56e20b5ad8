"""Serving a target + PARD draft with upstream vLLM (parallel drafting reads the draft's ``pard_token``)."""

from __future__ import annotations

import importlib.util
import json
import shlex

from .errors import PardError

INSTALL_HINT = "vLLM is not installed; install it with: pip install 'pard-spec[vllm]'"


def speculative_config(draft: str, num_draft_tokens: int) -> dict:
    """vLLM's ``--speculative-config`` for a parallel draft: one draft pass proposes ``num_draft_tokens``."""
    return {
        "model": draft,
        "num_speculative_tokens": num_draft_tokens,
        "method": "draft_model",
        "parallel_drafting": True,
    }


def serve_command(
    target: str,
    draft: str,
    num_draft_tokens: int,
    *,
    tensor_parallel_size: int | None = None,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The ``vllm serve`` argv (OpenAI-compatible server) for ``target`` drafted by ``draft``."""
    argv = ["vllm", "serve", target, "--speculative-config", json.dumps(speculative_config(draft, num_draft_tokens))]
    if tensor_parallel_size:
        argv += ["--tensor-parallel-size", str(tensor_parallel_size)]
    return argv + list(extra_args or [])


def shell_line(argv: list[str]) -> str:
    """argv as one copy-pasteable shell line."""
    return " ".join(shlex.quote(a) for a in argv)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_available():
        raise PardError(INSTALL_HINT)

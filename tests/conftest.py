"""Fixtures: tiny models built in code (no hub), targets of two architectures and drafts of every kind.

Helpers that tests import live in ``helpers.py``."""

from __future__ import annotations

import os

# Before any Hugging Face import: the hub clients read these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from pard.tiny import tiny_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _compile_only_when_asked(monkeypatch):
    """`--engine auto` compiles long runs; a test compiles only where it says engine="compiled" (compiling takes
    seconds per shape). test_compiled.py tests the auto rule itself."""
    from pard.decoding import engines

    monkeypatch.setattr(engines, "COMPILE_PAYS_TOKENS", float("inf"))


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def target(request):
    return tiny_model(request.param, seed=11)


@pytest.fixture(scope="session")
def random_draft():
    return tiny_model("draft", seed=12)


@pytest.fixture(scope="session")
def random_pard_draft():
    return tiny_model("pard", seed=13)

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

# Under pytest-xdist (the README's `-n 2`) each worker gets its share of the cores: two processes of two OpenMP
# threads each on 2 cores spin-wait on each other (README: some shapes ran 10-40x slower).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def _shipped_files() -> dict[str, str]:
    """Every file of the package's own zoo (the models shipped with pard, family.json) with its SHA-256."""
    import hashlib

    from pard.zoo import ZOO_DIR

    return {str(p.relative_to(ZOO_DIR)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ZOO_DIR.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def _shipped_models_stay_as_they_were():
    """Nothing the suite runs may change the models shipped inside the package: checked when the session ends
    (a failure here is an error at teardown of the last test)."""
    before = _shipped_files()
    yield
    after = _shipped_files()
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"the test session changed the package's shipped models: {changed[:5]}"


@pytest.fixture(autouse=True)
def _load_average_of_an_idle_machine(monkeypatch):
    """Benchmarks warn on stderr when the machine is busy; no test may pass or fail by the machine's load (tests that
    check the warning set their own)."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


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

"""Compiled steps: which path `--engine auto` takes, no recompilation after warm-up, and lossless output.

Dynamo's behaviour (graphs, guards, recompilations) does not depend on the backend, so the recompilation test
traces with the ``eager`` backend (seconds); the equality and distribution tests run the real inductor path and
are marked slow (compiling takes 10-130 s per model on 2 cores, less once inductor's on-disk cache is warm).
"""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from helpers import PROMPTS, hf_greedy
from pard import SamplingConfig, SpeculativeDecoder
from pard.decoding import engines, static
from pard.errors import InvalidArgumentError
from pard.tiny import tiny_model

MAX_NEW = 20


@pytest.fixture(scope="module")
def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)).eval()


def test_auto_compiles_long_cpu_runs_of_supported_models(target, gpt2, monkeypatch):
    monkeypatch.setattr(engines, "COMPILE_PAYS_TOKENS", 4096)
    monkeypatch.setattr(engines, "has_cxx_compiler", lambda: True)
    assert engines.resolve_engine("auto", [target], expected_tokens=10_000) == "compiled"
    assert engines.resolve_engine("auto", [target], expected_tokens=100) == "eager"  # compiling would not pay
    assert engines.resolve_engine("auto", [target, gpt2], expected_tokens=10_000) == "eager"  # no static path
    assert engines.resolve_engine("eager", [target], expected_tokens=10_000) == "eager"
    monkeypatch.setattr(engines, "has_cxx_compiler", lambda: False)
    assert engines.resolve_engine("auto", [target], expected_tokens=10_000) == "eager"


def test_static_paths_refuse_models_they_cannot_run(gpt2):
    with pytest.raises(InvalidArgumentError, match="Llama-style models only.*gpt2.*--engine eager"):
        engines.resolve_engine("compiled", [gpt2], None)
    with pytest.raises(InvalidArgumentError, match="unknown engine"):
        SpeculativeDecoder(gpt2, method="ar", engine="fast")


@pytest.mark.parametrize("method", ["ar", "vsd", "pard"])
def test_no_recompilation_after_warm_up(target, random_draft, random_pard_draft, method, monkeypatch):
    """A first generation meets every shape; the next ones (other prompts, lengths, batch rows finishing at
    different times) run the graphs already compiled."""
    monkeypatch.setattr(static, "compile_options", lambda device, compile: {"backend": "eager"})
    torch._dynamo.reset()
    draft = {"ar": None, "vsd": random_draft, "pard": random_pard_draft}[method]
    decoder = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=4, engine="compiled")
    first = decoder.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert first.stats.engine == "compiled" and first.stats.compile_seconds > 0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs > 0
    for prompts, budget in [(PROMPTS, MAX_NEW), ([p[::-1] for p in PROMPTS], 13), ([PROMPTS[1]] * 3, 7)]:
        out = decoder.generate(prompts, max_new_tokens=budget)
        assert out.stats.compile_seconds == 0
        assert out.sequences == [hf_greedy(target, p, budget) for p in prompts]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ar", "vsd", "pard"])
def test_compiled_greedy_equals_target(method):
    target = tiny_model("llama", seed=11)
    draft = {"ar": None, "vsd": tiny_model("draft", seed=12), "pard": tiny_model("pard", seed=13)}[method]
    decoder = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=4, engine="compiled")
    for prompts in (PROMPTS[:1], PROMPTS):
        out = decoder.generate(prompts, max_new_tokens=MAX_NEW)
        assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in prompts]


@pytest.mark.slow
def test_compiled_pard_follows_the_target_distribution():
    from test_engine_sampling import PROMPT, VOCAB, N, empirical_joint, exact_joint, tv, tv_bound

    kw = dict(vocab_size=VOCAB, sharpen=8.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    target, draft = tiny_model("llama", seed=21, **kw), tiny_model("pard", seed=23, **kw)
    sampling = SamplingConfig(0.8, top_k=5, top_p=0.9)
    exact = exact_joint(target, sampling)
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=3, engine="compiled")
    out = decoder.generate([PROMPT] * N, max_new_tokens=3, sampling=sampling, seed=3)
    assert tv(empirical_joint(out.sequences), exact) < tv_bound(exact, N)

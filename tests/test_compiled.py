"""Compiled steps: which path `--engine auto` takes, no recompilation after warm-up, and lossless output.

Dynamo's behaviour (graphs, guards, recompilations) does not depend on the backend, so the recompilation test
traces with the ``eager`` backend (seconds); the equality and distribution tests run the real inductor path and
are marked slow (compiling takes 10-130 s per model on 2 cores, less once inductor's on-disk cache is warm).
"""

import copy
import gc
import weakref

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
    # Compiling would not pay: the static path with the small-row kernel where it runs, else the eager one.
    from pard.kernels import kernel_pays

    short = "static" if kernel_pays(target.get_input_embeddings().weight) else "eager"
    assert engines.resolve_engine("auto", [target], expected_tokens=100) == short
    assert engines.resolve_engine("auto", [target], expected_tokens=100, matmul="library") == "eager"
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


def test_decoders_over_one_model_share_its_compiled_steps(target, random_pard_draft, monkeypatch):
    """A benchmark builds a decoder per method and K: the second one over the same models compiles only the pass
    widths the first did not meet, and a third asking for nothing new compiles nothing."""
    monkeypatch.setattr(static, "compile_options", lambda device, compile: {"backend": "eager"})
    torch._dynamo.reset()
    target, draft = copy.deepcopy(target), copy.deepcopy(random_pard_draft)  # no caches kept by other tests
    assert engines.kept_static_lms(target) == {}  # a copy does not carry them either

    def run(method, k):
        decoder = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=k, engine="compiled")
        out = decoder.generate(PROMPTS, max_new_tokens=MAX_NEW)
        assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]
        return out.stats.compile_seconds, torch._dynamo.utils.counters["stats"]["unique_graphs"]

    assert run("pard", 4)[0] > 0
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert run("ar", 1) == (0, graphs)  # the target's 1-token step was compiled by the pard decoder
    seconds, more_graphs = run("pard", 2)  # new widths: the target's 3-token pass, the draft's 2- and 3-token ones
    assert seconds > 0 and more_graphs > graphs
    assert run("pard", 2) == (0, more_graphs)
    kept = engines.kept_static_lms(target)
    assert [key[:3] for key in kept] == [("target", len(PROMPTS), True)]  # (role, batch size, compiled, kernel)
    assert next(iter(kept.values())).buckets == (1, 3, 5)


def test_kept_caches_survive_a_dynamo_reset_and_die_with_their_model(monkeypatch):
    monkeypatch.setattr(static, "compile_options", lambda device, compile: {"backend": "eager"})
    model = tiny_model("llama", seed=5)
    decoder = SpeculativeDecoder(model, method="ar", engine="compiled")
    expected = [hf_greedy(model, p, MAX_NEW) for p in PROMPTS]
    assert decoder.generate(PROMPTS, max_new_tokens=MAX_NEW).sequences == expected
    torch._dynamo.reset()  # the graphs the kept cache had compiled are gone: the next pass compiles them again
    again = decoder.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert again.sequences == expected and again.stats.compile_seconds > 0
    kept = weakref.ref(next(lm for key, lm in engines.kept_static_lms(model).items() if key[:3] == ("target",
                                                                                                  len(PROMPTS), True)))
    del decoder, model
    torch._dynamo.reset()
    gc.collect()
    assert kept() is None


@pytest.mark.slow
@pytest.mark.parametrize("method, matmul", [("ar", "auto"), ("vsd", "auto"), ("pard", "auto"), ("pard", "library")])
def test_compiled_greedy_equals_target(method, matmul):
    """Compiled steps through the small-row kernel (auto) and through inductor's own GEMMs (library)."""
    target = tiny_model("llama", seed=11)
    draft = {"ar": None, "vsd": tiny_model("draft", seed=12), "pard": tiny_model("pard", seed=13)}[method]
    decoder = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=4, engine="compiled", matmul=matmul)
    for prompts in (PROMPTS[:1], PROMPTS):
        out = decoder.generate(prompts, max_new_tokens=MAX_NEW)
        assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in prompts]
    # Continuous batching through the compiled steps: six prompts, three rows, EOS ids that stagger the finishes.
    prompts = PROMPTS + [p[::-1] for p in PROMPTS]
    refs = [hf_greedy(target, p, MAX_NEW) for p in prompts]
    eos = {refs[0][3], refs[4][12]}
    out = decoder.generate(prompts, max_new_tokens=MAX_NEW, eos_token_id=sorted(eos), max_batch_size=len(PROMPTS))
    assert out.sequences == [r[: next((i + 1 for i, t in enumerate(r) if t in eos), len(r))] for r in refs]


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

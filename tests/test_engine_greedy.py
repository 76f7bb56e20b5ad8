"""Lossless, greedy: every method reproduces the target's own transformers `generate` output token for token, on
every engine path (the dynamic cache, the static one with the small-row kernel and with the library GEMM; the
compiled steps in test_compiled.py)."""

import pytest
import torch

from helpers import PROMPTS, as_pard_draft, hf_greedy, noisy_copy
from pard import SpeculativeDecoder
from pard.tiny import BYTE_VOCAB, tiny_model

MAX_NEW = 24
KS = [1, 2, 4, 8]
BATCHES = {1: PROMPTS[:1], 3: PROMPTS}


@pytest.fixture(scope="module")
def references(target):
    return {tuple(p): hf_greedy(target, p, MAX_NEW) for p in PROMPTS}


@pytest.fixture(params=["eager", "static"])
def engine(request):
    return request.param  # static: through the small-row kernel (test_static_library_path: the library GEMM)


def run(target, draft, method, k, prompts, engine="eager", matmul="auto", **kwargs):
    decoder = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=k, engine=engine, matmul=matmul)
    return decoder.generate(prompts, max_new_tokens=MAX_NEW, **kwargs)


@pytest.mark.parametrize("method", ["ar", "vsd", "pard"])
def test_static_library_path(target, random_draft, random_pard_draft, references, method):
    """The static path with --matmul library (the kernel's twin every other static test runs) stays exact too."""
    draft = {"ar": None, "vsd": random_draft, "pard": random_pard_draft}[method]
    out = run(target, draft, method, 4, PROMPTS, engine="static", matmul="library")
    assert out.stats.matmul == "library"
    assert out.sequences == [references[tuple(p)] for p in PROMPTS]


def test_static_path_runs_the_kernel(target, random_pard_draft, references):
    from pard.kernels import kernel_isa

    if kernel_isa() is None:
        pytest.skip("the kernel could not be built here")
    out = run(target, random_pard_draft, "pard", 4, PROMPTS, engine="static")
    assert out.stats.matmul.startswith("kernel")


def test_ar_equals_hf_generate(target, references, engine):
    out = run(target, None, "ar", 1, PROMPTS, engine=engine)
    assert out.sequences == [references[tuple(p)] for p in PROMPTS]
    assert out.stats.mean_accepted_length == 1.0
    assert out.stats.target_forwards == MAX_NEW


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("method", ["vsd", "pard"])
def test_random_draft_equals_target(target, random_draft, random_pard_draft, references, method, k, batch, engine):
    draft = random_draft if method == "vsd" else random_pard_draft
    prompts = BATCHES[batch]
    out = run(target, draft, method, k, prompts, engine=engine)
    assert out.sequences == [references[tuple(p)] for p in prompts]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k", KS)
def test_vsd_with_draft_equal_to_target_accepts_everything(target, references, k, batch, engine):
    prompts = BATCHES[batch]
    out = run(target, noisy_copy(target, 0.0, 0), "vsd", k, prompts, engine=engine)
    assert out.sequences == [references[tuple(p)] for p in prompts]
    for accepted, drafted in zip(out.stats.accepted_lengths, out.stats.drafted_lengths):
        # Every step accepts all it was offered; only the last step is shortened by the token budget.
        assert accepted == drafted
        assert all(a == k for a in accepted[:-1])
    steps = -(-MAX_NEW // (k + 1))  # ceil: K + 1 tokens per target pass
    assert out.stats.target_forwards == steps
    if MAX_NEW % (k + 1) == 0:
        assert out.stats.mean_accepted_length == k + 1


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("k", KS)
def test_pard_with_draft_equal_to_target(target, references, k, batch, engine):
    """The first PARD proposal comes from the last real token: a copy of the target always gets it right (1-α = 1);
    the later ones are conditioned on mask tokens the copy was never trained on."""
    prompts = BATCHES[batch]
    draft = as_pard_draft(target, BYTE_VOCAB + 2)
    out = run(target, draft, "pard", k, prompts, engine=engine)
    assert out.sequences == [references[tuple(p)] for p in prompts]
    assert out.stats.acceptance_per_position[0] == 1.0
    # One draft forward per proposing step, whatever k (paper Eq. 4).
    assert out.stats.draft_forwards == sum(1 for d in out.stats.drafted_lengths[0] if d > 0)


@pytest.mark.parametrize("method", ["vsd", "pard"])
def test_ragged_acceptance_rows_equal_rows_alone(target, method, engine):
    """A noisy copy of the target accepts different numbers of tokens per row in the same step."""
    draft = noisy_copy(target, 0.15, seed=3)
    if method == "pard":
        draft = as_pard_draft(draft, BYTE_VOCAB + 2)
    batched = run(target, draft, method, 4, PROMPTS, engine=engine)
    alone = [run(target, draft, method, 4, [p], engine=engine).sequences[0] for p in PROMPTS]
    assert batched.sequences == alone
    assert batched.sequences == [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]
    # Prove the batch was ragged: in some step the rows accepted different counts.
    first_steps = [row[:3] for row in batched.stats.accepted_lengths]
    assert any(len({row[s] for row in first_steps}) > 1 for s in range(3))
    assert 0 < batched.stats.acceptance_per_position[0] < 1


def test_left_padded_tensor_prompts(target, random_pard_draft, references, engine):
    width = max(map(len, PROMPTS))
    ids = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(PROMPTS):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = SpeculativeDecoder(target, random_pard_draft, method="pard", num_draft_tokens=3, engine=engine).generate(
        ids, attention_mask=mask, max_new_tokens=MAX_NEW
    )
    assert out.sequences == [references[tuple(p)] for p in PROMPTS]


@pytest.mark.parametrize("method", ["ar", "vsd", "pard"])
def test_per_row_eos_and_budget(target, references, method, engine):
    draft = as_pard_draft(noisy_copy(target, 0.1, seed=4), BYTE_VOCAB + 2)
    refs = [references[tuple(p)] for p in PROMPTS]
    # Two EOS ids: the 6th token of row 0 and the 10th of row 2 (row 1 may or may not contain them).
    eos = {refs[0][5], refs[2][9]}
    out = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=4, engine=engine).generate(
        PROMPTS, max_new_tokens=MAX_NEW, eos_token_id=sorted(eos)
    )
    for seq, ref in zip(out.sequences, refs):
        cut = next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))
        assert seq == ref[:cut]
    assert out.stats.tokens == sum(map(len, out.sequences))
    # A budget smaller than K + 1 still yields exactly that many tokens.
    out = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=8, engine=engine).generate(
        PROMPTS, max_new_tokens=3)
    assert out.sequences == [r[:3] for r in refs]


def test_context_window_caps_the_budget(target, random_pard_draft, engine):
    window = target.config.max_position_embeddings
    prompt = [7] * (window - 5)
    out = SpeculativeDecoder(target, random_pard_draft, method="pard", num_draft_tokens=8, engine=engine).generate(
        [prompt], max_new_tokens=50
    )
    assert len(out.sequences[0]) == 5
    assert out.sequences[0] == hf_greedy(target, prompt, 5)


@pytest.mark.parametrize("method", ["ar", "vsd", "pard"])
def test_continuous_batching_rows_equal_rows_alone(target, references, method, engine):
    """max_batch_size=2 over six prompts: rows finish at different steps (EOS ids cut some short) and the waiting
    prompts take their places mid-generation; every output is still the target's own greedy output."""
    draft = None if method == "ar" else noisy_copy(target, 0.15, seed=3)
    if method == "pard":
        draft = as_pard_draft(draft, BYTE_VOCAB + 2)
    prompts = PROMPTS + [p[::-1] for p in PROMPTS]
    refs = [references.get(tuple(p)) or hf_greedy(target, p, MAX_NEW) for p in prompts]
    eos = {refs[0][3], refs[4][12]}
    finished = {}
    decoder = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=4, engine=engine)
    out = decoder.generate(prompts, max_new_tokens=MAX_NEW, eos_token_id=sorted(eos), max_batch_size=2,
                           on_finish=lambda index, tokens, top, features: finished.setdefault(index, list(tokens)))
    expected = [ref[: next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))] for ref in refs]
    assert out.sequences == expected
    assert finished == dict(enumerate(expected))  # each prompt reported once, when done
    assert len({len(seq) for seq in expected}) > 2  # the rows really finished at different times
    if draft is not None:  # an admitted row's draft read its own prompt: its first proposal is the one made alone
        alone = [decoder.generate([p], max_new_tokens=MAX_NEW).stats.accepted_lengths[0][0] for p in prompts]
        assert [row[0] for row in out.stats.accepted_lengths] == alone


def test_sliding_window_models_cannot_refill_rows():
    """A sliding-window cache keeps only its last tokens, so a row cannot start over in it: the decoder says so,
    refuses a pool in one line, and still decodes every prompt given at once."""
    from pard.errors import InvalidArgumentError

    target = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    decoder = SpeculativeDecoder(target, method="ar")
    assert not decoder.admits_new_rows
    with pytest.raises(InvalidArgumentError, match="sliding-window"):
        decoder.generate(PROMPTS, max_new_tokens=4, max_batch_size=2)
    assert len(decoder.generate(PROMPTS, max_new_tokens=4, max_batch_size=3).sequences) == 3

"""COD sample building (Algorithm 1): literal layouts, hypothesis properties, and training == inference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pard.decoding.proposers import ParallelDraftProposer
from pard.errors import InvalidArgumentError
from pard.tiny import tiny_model
from pard.training.cod import IGNORE_INDEX, CODConfig, attention_mask_from_structure, build_cod_sample
from pard.training.collator import CODCollator

M = 99  # mask id in the literal examples
TELL, ME, A, STORY, ABOUT = 10, 11, 12, 13, 14


def layout(sample):
    return {k: getattr(sample, k).tolist() for k in ["input_ids", "labels", "position_ids", "anchors", "depths"]}


def test_figure4_full_layout_literal():
    """'tell me a story about', K = 3, r = 1: Figure 4b without the context-free positions."""
    s = build_cod_sample([TELL, ME, A, STORY, ABOUT], CODConfig(3, 1.0, 0.0), [M], np.random.default_rng(0))
    assert layout(s) == {
        #            subtask 1 (real)        | subtask 2: m after tell/me/a | subtask 3: m m after tell/me
        "input_ids": [TELL, ME, A, STORY, M, M, M, M, M],
        "labels": [ME, A, STORY, ABOUT, A, STORY, ABOUT, STORY, ABOUT],
        "position_ids": [0, 1, 2, 3, 1, 2, 3, 2, 3],
        "anchors": [0, 1, 2, 3, 0, 1, 2, 0, 1],
        "depths": [0, 0, 0, 0, 1, 1, 1, 2, 2],
    }
    mask = attention_mask_from_structure(torch.from_numpy(s.anchors)[None], torch.from_numpy(s.depths)[None])[0].int()
    assert mask.tolist() == [
        # tell me a story | m(0) m(1) m(2) | mm(0) mm(1)
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # tell
        [1, 1, 0, 0, 0, 0, 0, 0, 0],  # me
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # a
        [1, 1, 1, 1, 0, 0, 0, 0, 0],  # story
        [1, 0, 0, 0, 1, 0, 0, 0, 0],  # m at pos 1 after 'tell' -> 'a'
        [1, 1, 0, 0, 0, 1, 0, 0, 0],  # m at pos 2 after 'tell me' -> 'story'
        [1, 1, 1, 0, 0, 0, 1, 0, 0],  # m at pos 3 after 'tell me a' -> 'about'
        [1, 0, 0, 0, 1, 0, 0, 1, 0],  # 2nd m after 'tell' (chain: m at pos 1) -> 'story'
        [1, 1, 0, 0, 0, 1, 0, 0, 1],  # 2nd m after 'tell me' (chain: m at pos 2) -> 'about'
    ]


def test_figure4_cod_layout_literal():
    """Same sentence, r = 0.5: subtask 2 keeps 1.5 -> 1 or 2 of 3 positions, subtask 3 keeps 0.5 -> 0 or 1 of 2,
    and only on chains whose subtask-2 mask survived. Seed 25 draws the paper's own example (Appendix B): keep the
    +2 masks after 'tell' and 'tell me', and of the two +3 candidates the one whose chain starts after 'tell'."""
    s = build_cod_sample([TELL, ME, A, STORY, ABOUT], CODConfig(3, 0.5, 0.0), [M], np.random.default_rng(25))
    assert layout(s) == {
        "input_ids": [TELL, ME, A, STORY, M, M, M],
        "labels": [ME, A, STORY, ABOUT, A, STORY, STORY],
        "position_ids": [0, 1, 2, 3, 1, 2, 2],
        "anchors": [0, 1, 2, 3, 0, 1, 0],
        "depths": [0, 0, 0, 0, 1, 1, 2],
    }


def test_distinct_mask_ids_per_depth():
    s = build_cod_sample(list(range(10)), CODConfig(4, 1.0, 0.0), [91, 92], np.random.default_rng(0))
    assert set(s.input_ids[s.depths == 1]) == {91}
    assert set(s.input_ids[s.depths == 2]) == {92} and set(s.input_ids[s.depths == 3]) == {92}


def test_bad_config_and_short_sequence():
    with pytest.raises(InvalidArgumentError):
        CODConfig(0)
    with pytest.raises(InvalidArgumentError):
        CODConfig(4, retention=0.0)
    with pytest.raises(InvalidArgumentError, match="must not exceed r"):
        CODConfig(4, retention=0.5, min_retention=0.6)
    with pytest.raises(InvalidArgumentError):
        CODConfig(4, retention=float("nan"))
    with pytest.raises(InvalidArgumentError):
        build_cod_sample([1], CODConfig(4), [M], np.random.default_rng(0))


configs = st.tuples(st.integers(1, 9), st.floats(0.05, 1.0), st.floats(0.0, 1.0)).map(
    lambda t: CODConfig(t[0], t[1], t[2] * t[1])  # r_min in [0, r]
)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 80), config=configs, seed=st.integers(0, 2**32 - 1), masked=st.booleans())
def test_cod_invariants(n, config, seed, masked):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 50, size=n)
    trainable = rng.random(n) < 0.7 if masked else None
    s = build_cod_sample(x, config, [M], np.random.default_rng(seed))
    if masked:
        s = build_cod_sample(x, config, [M], np.random.default_rng(seed), trainable)
    ok = np.ones(n, bool) if trainable is None else trainable
    real = s.depths == 0
    # Subtask 1 is the whole sequence but its last token; real tokens sit at their own positions.
    assert (s.input_ids[real] == x[:-1]).all() and (s.position_ids[real] == np.arange(n - 1)).all()
    assert (s.anchors[real] == s.position_ids[real]).all()
    # Masks: id, position = anchor + depth, label = the token after the position; no context-free position.
    masks = ~real
    assert (s.input_ids[masks] == M).all()
    assert (s.position_ids == s.anchors + s.depths).all()
    assert (s.anchors >= 0).all()
    labeled = s.labels != IGNORE_INDEX
    assert (s.labels[labeled] == x[s.position_ids[labeled] + 1]).all()
    assert (s.labels[real] == np.where(ok[1:], x[1:], IGNORE_INDEX)).all()
    assert labeled[masks].all()  # masks are only kept where they train something
    # Chain integrity: a kept mask at depth d > 1 has its depth d-1 predecessor on the same anchor.
    chains = set(zip(s.anchors[masks].tolist(), s.depths[masks].tolist()))
    assert all(d == 1 or (a, d - 1) in chains for a, d in chains)
    assert len(chains) == masks.sum()  # no duplicates
    assert s.depths.max() < config.num_draft_tokens
    # Counts: subtask k keeps floor or ceil of N_k * gamma_k positions (Eq. 11), fewer only when its candidate
    # chains (kept at depth d-1 and with a trainable label at depth d) run out.
    prev = set(range(n - 1))
    for d in range(1, config.num_draft_tokens):
        valid = {j for j in range(n) if j + d + 1 < n and ok[j + d + 1]}
        kept = set(s.anchors[s.depths == d].tolist())
        candidates = prev & valid
        want = len(valid) * config.retention_of(d + 1)
        assert kept <= candidates
        allowed = {min(int(np.floor(want)), len(candidates)), min(int(np.ceil(want)), len(candidates))}
        assert len(kept) in allowed or (not prev and not kept)
        prev = kept
    # r = 1: the full layout; every valid anchor at every depth.
    if config.retention == 1.0 and not masked:
        assert len(s) == sum(max(n - k, 0) for k in range(1, config.num_draft_tokens + 1))


def test_counts_follow_eq_11_in_expectation():
    config = CODConfig(8, 0.7, 0.2)
    n = 257
    rng = np.random.default_rng(0)
    lengths = [len(build_cod_sample(np.arange(n) % 50, config, [M], rng)) for _ in range(400)]
    assert abs(np.mean(lengths) - config.expected_tokens(n)) < 1.0
    # Eq. 10/11 in the large-N limit: about N * sum_k gamma_k = 3.31 N here, vs. K N = 8 N without COD.
    assert config.expected_tokens(n) / n == pytest.approx(sum(config.retention_of(k) for k in range(1, 9)), rel=0.03)


def test_drop_pattern_random_per_sample_and_reproducible():
    config = CODConfig(8, 0.7, 0.2)
    x = np.arange(100) % 50
    a = build_cod_sample(x, config, [M], np.random.default_rng(1))
    b = build_cod_sample(x, config, [M], np.random.default_rng(1))
    c = build_cod_sample(x, config, [M], np.random.default_rng(2))
    assert layout(a) == layout(b)
    assert layout(a) != layout(c)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_training_logits_equal_engine_pard_step(arch, attn):
    """Every kept position of a packed sample gets the logits the engine's PARD step computes for the same prefix
    followed by mask tokens."""
    model = tiny_model(arch, seed=5, attn_implementation=attn)
    mask_id = 258
    k_train = 4
    x = np.random.default_rng(0).integers(0, 256, size=23)
    sample = build_cod_sample(x, CODConfig(k_train, 0.7, 0.2), [mask_id], np.random.default_rng(0))
    batch = CODCollator(attn_implementation=attn)([sample])
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=batch["attention_mask"]
        ).logits[0]  # (L, V)
    checked = 0
    for anchor in np.unique(sample.anchors):
        proposer = ParallelDraftProposer(model, [mask_id], target_vocab_size=model.config.vocab_size, batch_size=1)
        seq = torch.from_numpy(x[: anchor + 1])[None]
        length = torch.tensor([anchor + 1])
        proposer.prefill(seq, length)
        engine = proposer.draft_logits(seq, length, k_train)[0]  # (K, V): last real token, then masks
        for i in np.nonzero(sample.anchors == anchor)[0]:
            torch.testing.assert_close(packed[i], engine[sample.depths[i]], atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked == len(sample)

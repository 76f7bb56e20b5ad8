"""The contract of :class:`pard.decoding.lm.LanguageModel`: every cache implementation passes these tests.

Reference: the model run without any cache over each row's whole sequence. A cached LM must give the same logits
whatever it was asked before (appends, per-row rollbacks, dropped rows, ragged feeds).
"""

import pytest
import torch

from pard.decoding.cache import CachedLM
from pard.decoding.lm import LanguageModel
from pard.decoding.static import StaticLM
from pard.tiny import tiny_model


def small_static(model, batch_size):
    """A static cache barely bigger than the tests need, so that rollbacks' holes force compaction."""
    return StaticLM(model, batch_size, capacity=12, buckets=(1, 2, 4))


IMPLEMENTATIONS = [CachedLM, StaticLM, small_static]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    return tiny_model(request.param, seed=3)


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def make(request, model):
    if request.param is StaticLM:
        return lambda batch_size: StaticLM(model, batch_size, capacity=64)
    return lambda batch_size: request.param(model, batch_size)


def reference(model, tokens: list[int]) -> torch.Tensor:
    """Logits (T, V) of one row decoded from scratch."""
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0]


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_implements_the_protocol(make):
    assert isinstance(make(2), LanguageModel)


def test_forward_appends_and_matches_an_uncached_pass(make, model):
    lm = make(2)
    rows = [[5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6]]
    first = lm.forward(torch.tensor([r[:4] for r in rows]))  # (B, 4, V)
    assert first.shape[:2] == (2, 4) and lm.lengths.tolist() == [4, 4]
    second = lm.forward(torch.tensor([r[4:] for r in rows]))  # (B, 2, V)
    assert lm.lengths.tolist() == [6, 6]
    for i, row in enumerate(rows):
        close(torch.cat([first[i], second[i]]), reference(model, row))
    last = lm.forward(torch.tensor([[11], [12]]), logits_to_keep=1)
    assert last.shape[1] == 1


def test_ragged_rollback_then_continue(make, model):
    lm = make(2)
    lm.forward(torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]]))
    lm.rollback(torch.tensor([2, 3]))  # row 0 keeps [5, 6], row 1 keeps [1, 2, 3]
    assert lm.lengths.tolist() == [2, 3]
    out = lm.forward(torch.tensor([[40, 41], [50, 51]]))
    close(out[0], reference(model, [5, 6, 40, 41])[2:])
    close(out[1], reference(model, [1, 2, 3, 50, 51])[3:])
    lm.rollback(torch.tensor([4, 4]))
    out = lm.forward(torch.tensor([[60], [61]]))
    close(out[0, 0], reference(model, [5, 6, 40, 41, 60])[-1])
    close(out[1, 0], reference(model, [1, 2, 3, 50, 61])[-1])


def test_keep_rows_drops_finished_rows(make, model):
    lm = make(3)
    lm.forward(torch.tensor([[5, 6], [1, 2], [7, 8]]))
    lm.rollback(torch.tensor([2, 1, 2]))
    lm.keep_rows(torch.tensor([1, 2]))
    assert lm.lengths.tolist() == [1, 2]
    out = lm.forward(torch.tensor([[30], [31]]))
    close(out[0, 0], reference(model, [1, 30])[-1])
    close(out[1, 0], reference(model, [7, 8, 31])[-1])


def test_feed_reads_ragged_gaps(make, model):
    lm = make(2)
    sequences = torch.tensor([[5, 6, 7, 8, 9, 0], [1, 2, 3, 4, 5, 6]])  # (B, L), right-padded
    assert lm.feed(sequences, torch.tensor([2, 4]), need_logits=False) is None
    assert lm.lengths.tolist() == [2, 4]
    logits = lm.feed(sequences, torch.tensor([5, 6]))  # row 0 reads 3 tokens, row 1 reads 2
    assert lm.lengths.tolist() == [5, 6]
    close(logits[0], reference(model, [5, 6, 7, 8, 9])[-1])
    close(logits[1], reference(model, [1, 2, 3, 4, 5, 6])[-1])


def test_admit_starts_rows_over_on_new_prompts(make, model):
    """Continuous batching: rows 0 and 2 take new prompts of other lengths (longer than anything cached, and a
    one-token one that reads nothing) while row 1 keeps its tokens and continues."""
    lm = make(3)
    lm.forward(torch.tensor([[5, 6, 7], [1, 2, 3], [7, 8, 9]]))
    lm.rollback(torch.tensor([3, 2, 1]))
    sequences = torch.tensor([[20, 21, 22, 23, 24, 25, 26], [0] * 7, [30, 0, 0, 0, 0, 0, 0]])  # (B, L)
    lm.admit(torch.tensor([0, 2]), sequences, torch.tensor([6, 0, 0]))
    assert lm.lengths.tolist() == [6, 2, 0]
    out = lm.forward(torch.tensor([[26], [40], [30]]))
    close(out[0, 0], reference(model, [20, 21, 22, 23, 24, 25, 26])[-1])
    close(out[1, 0], reference(model, [1, 2, 40])[-1])
    close(out[2, 0], reference(model, [30])[-1])
    # And the batch goes on as usual: ragged rollback, another pass.
    lm.rollback(torch.tensor([6, 2, 1]))
    out = lm.forward(torch.tensor([[50, 51], [52, 53], [54, 55]]))
    close(out[0], reference(model, [20, 21, 22, 23, 24, 25, 50, 51])[-2:])
    close(out[1], reference(model, [1, 2, 52, 53])[-2:])
    close(out[2], reference(model, [30, 54, 55])[-2:])


def test_the_cache_goes_by_the_name_the_model_takes(model):
    """transformers renamed ``past_key_values`` to ``cache`` (the old name warns, then goes in 5.40): the dynamic
    cache passes whichever name the model's forward declares, so it neither warns nor breaks on either side."""
    import warnings

    from pard.decoding.cache import cache_argument

    assert cache_argument(model) == "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CachedLM(model, 1).forward(torch.tensor([[5, 6, 7]]))

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_argument(OldStyle()) == "past_key_values"

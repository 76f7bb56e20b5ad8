"""The acceptance rule and the warping, as pure functions on hand-built tables."""

import pytest
import torch

from pard.decoding.sampling import SamplingConfig, logits_to_probs
from pard.decoding.verify import greedy_accept, rejection_sample
from pard.errors import InvalidArgumentError


def one_hot_logits(ids, vocab=5):
    return torch.nn.functional.one_hot(torch.tensor(ids), vocab).float() * 10


def test_greedy_accept_literal():
    draft = torch.tensor([[1, 2, 3], [1, 4, 3], [0, 2, 3], [1, 2, 3]])
    target = torch.stack(
        [
            one_hot_logits([1, 2, 3, 4]),  # all accepted, bonus 4
            one_hot_logits([1, 2, 3, 4]),  # d_2 rejected, correction 2
            one_hot_logits([1, 2, 3, 4]),  # d_1 rejected, correction 1
            one_hot_logits([1, 2, 0, 4]),  # d_3 rejected, correction 0
        ]
    )
    accepted, next_token = greedy_accept(draft, target)
    assert accepted.tolist() == [3, 1, 0, 2]
    assert next_token.tolist() == [4, 2, 1, 0]


def test_greedy_accept_without_drafts_is_plain_argmax():
    accepted, next_token = greedy_accept(torch.empty(2, 0, dtype=torch.long), one_hot_logits([[3], [1]]))
    assert accepted.tolist() == [0, 0] and next_token.tolist() == [3, 1]


def _run_many(draft_ids, q, p, n=40000, seed=0):
    """Repeat one (draft, q, p) configuration n times as a batch; return accepted (n,), next (n,)."""
    gen = torch.Generator().manual_seed(seed)
    expand = lambda t: t.expand(n, *t.shape[1:])  # noqa: E731
    return rejection_sample(expand(draft_ids), expand(q), expand(p), gen)


def test_rejection_p_equals_q_accepts_everything():
    probs = torch.tensor([0.5, 0.3, 0.2])
    q = probs.expand(1, 2, 3)
    p = torch.tensor([[[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]]])
    accepted, next_token = _run_many(torch.tensor([[0, 1]]), q, p, n=5000)
    assert (accepted == 2).all()
    assert (next_token == 2).all()  # the bonus comes from p_{K+1}, here a point mass


def test_rejection_disjoint_supports_always_rejects_and_resamples_from_p():
    q = torch.tensor([[[1.0, 0.0, 0.0]]])
    p = torch.tensor([[[0.0, 0.25, 0.75], [1 / 3, 1 / 3, 1 / 3]]])
    accepted, next_token = _run_many(torch.tensor([[0]]), q, p)
    assert (accepted == 0).all()
    freq = torch.bincount(next_token, minlength=3).float() / len(next_token)
    assert freq[0] == 0
    assert abs(freq[2].item() - 0.75) < 0.01


def test_rejection_first_token_follows_p():
    """Whatever q is, the first committed token is distributed as p_1 (the lossless property, one position)."""
    gen = torch.Generator().manual_seed(1)
    q1 = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    p1 = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    n = 200000
    draft = torch.multinomial(q1, n, replacement=True, generator=gen)[:, None]  # d_1 ~ q
    q = q1.expand(n, 1, 5)
    p = torch.stack([p1, torch.full((5,), 0.2)]).expand(n, 2, 5)
    accepted, next_token = rejection_sample(draft, q, p, gen)
    first = torch.where(accepted >= 1, draft[:, 0], next_token)
    freq = torch.bincount(first, minlength=5).float() / n
    assert torch.allclose(freq, p1, atol=0.005)
    # Acceptance rate is sum_x min(p, q) = 0.1 + 0.1 + 0.1 + 0.1 + 0 = 0.4.
    assert abs(accepted.float().mean().item() - 0.4) < 0.005


def test_top_k_truncation():
    probs = logits_to_probs(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), SamplingConfig(1.0, top_k=2))
    assert probs[0, 0] == 0 and probs[0, 3] == 0
    expected = torch.softmax(torch.tensor([3.0, 2.0]), 0)
    assert torch.allclose(probs[0, [1, 2]], expected)


def test_top_p_truncation_keeps_smallest_set_covering_p():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.25, 0.15]]))
    probs = logits_to_probs(logits, SamplingConfig(1.0, top_p=0.7))
    # 0.5 < 0.7, 0.5 + 0.25 >= 0.7: keep tokens 1 and 2.
    assert torch.allclose(probs, torch.tensor([[0.0, 2 / 3, 1 / 3, 0.0]]))
    probs = logits_to_probs(logits, SamplingConfig(1.0, top_p=0.5))
    assert torch.allclose(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_rejection_with_truncated_distributions_never_emits_truncated_tokens():
    cfg = SamplingConfig(1.0, top_k=2)
    p = logits_to_probs(torch.tensor([[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]]), cfg)
    q = logits_to_probs(torch.tensor([[[3.0, 2.0, 1.0, 0.0]]]), cfg)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    draft = torch.multinomial(q[0, 0], n, replacement=True, generator=gen)[:, None]
    accepted, next_token = rejection_sample(draft, q.expand(n, 1, 4), p.expand(n, 2, 4), gen)
    first = torch.where(accepted >= 1, draft[:, 0], next_token)
    assert set(first.tolist()) <= {2, 3}
    freq = torch.bincount(first, minlength=4).float() / n
    assert torch.allclose(freq, p[0, 0], atol=0.01)


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_config(kwargs):
    with pytest.raises(InvalidArgumentError):
        SamplingConfig(**kwargs)

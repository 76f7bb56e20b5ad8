"""`-k auto`: the per-step verification length (cost model, calibration, switching off) — and it stays lossless."""

import pytest
import torch

from helpers import PROMPTS, hf_greedy, noisy_copy
from pard import SamplingConfig, SpeculativeDecoder
from pard.decoding.adaptive import OFF_STEPS, PATIENCE, VerifyLengthChooser
from pard.tiny import tiny_model


def chooser(costs: dict[int, float], draft: float = 0.01, k_max: int = 8, vsd: bool = False) -> VerifyLengthChooser:
    c = VerifyLengthChooser(k_max, draft_passes_scale=vsd)
    c.verify_seconds, c.draft_seconds = dict(costs), draft
    return c


def conf(*values) -> torch.Tensor:
    return torch.tensor([values])  # (1, k)


def test_confident_draft_and_flat_cost_verify_everything():
    assert chooser({1: 0.1, 9: 0.1}).choose(conf(*[0.95] * 8)) == 8


def test_unsure_draft_decodes_plainly():
    assert chooser({1: 0.1, 9: 0.2}).choose(conf(*[0.05] * 8)) == 0


def test_the_cost_of_longer_verification_picks_the_middle():
    # T(n) = 0.1 + 0.05 (n - 1); alpha = 0.9: E[tokens | k] / cost(k) peaks at k = 3 (worked out by hand below).
    c = chooser({n: 0.1 + 0.05 * (n - 1) for n in range(1, 10)}, draft=0.0)
    rates = [sum(0.9 ** i for i in range(k + 1)) / (0.1 + 0.05 * k) for k in range(9)]
    assert max(range(9), key=rates.__getitem__) == 3
    assert c.choose(conf(*[0.9] * 8)) == 3


def test_an_unmeasured_length_is_assumed_cheap_until_tried():
    c = chooser({1: 0.1, 9: 0.5}, draft=0.0)
    assert c.target_seconds(3) == 0.1 and c.choose(conf(*[0.9] * 8)) == 7  # optimistic: try the unknown
    c.observe(7, conf(*[0.9] * 8), torch.tensor([7]), 0.0, 0.4)  # ...which measures it as it is
    assert c.target_seconds(8) == 0.4


def test_rows_are_summed_for_the_batch():
    c = chooser({1: 0.1, 9: 0.1}, draft=0.05)
    assert c.choose(torch.tensor([[0.99] * 8, [0.0] * 8])) == 8  # one sure row carries the batch


def test_calibration_learns_from_what_was_accepted():
    c = chooser({n: 0.1 + 0.0125 * (n - 1) for n in range(1, 10)})
    before = c.alpha(conf(0.9))[0, 0].item()
    for _ in range(50):  # the draft says 0.9 but is never right at position 1
        c.observe(1, conf(0.9), torch.tensor([0]), 0.01, 0.1125)
    assert before == pytest.approx(0.9) and c.alpha(conf(0.9))[0, 0].item() < 0.1
    assert c.choose(conf(*[0.9] * 8)) == 0


def test_switches_off_after_losing_and_probes_with_backoff():
    c = chooser({1: 0.1, 9: 0.2})
    for _ in range(PATIENCE):
        assert c.drafting()
        c.observe(0, conf(*[0.01] * 8), torch.tensor([0]), 0.01, 0.1)  # drafted, chose plain decoding
    skipped = 0
    while not c.drafting():
        skipped += 1
        c.observe(0, None, torch.tensor([0]), 0.0, 0.1)
    assert skipped == OFF_STEPS  # ...then one probe; it loses again: twice as long off
    c.observe(0, conf(*[0.01] * 8), torch.tensor([0]), 0.01, 0.1)
    skipped = 0
    while not c.drafting():
        skipped += 1
    assert skipped == 2 * OFF_STEPS


def test_vsd_stops_drafting_when_the_next_token_does_not_pay():
    c = chooser({1: 0.1, 9: 0.1}, draft=0.01, vsd=True)
    assert c.keep_drafting(conf(0.99))
    assert not c.keep_drafting(conf(0.01))  # almost surely rejected: another draft pass is wasted


@pytest.mark.parametrize("method", ["pard", "vsd"])
@pytest.mark.parametrize("batch", [1, 3])
def test_auto_is_lossless_greedy(target, method, batch):
    draft = noisy_copy(target, 0.02, seed=9)
    if method == "pard":
        draft.config.pard_token, draft.config.spd_type = 258, "pard"
    prompts = PROMPTS[:batch]
    out = SpeculativeDecoder(target, draft, method=method, num_draft_tokens="auto", max_draft_tokens=6).generate(
        prompts, max_new_tokens=30)
    assert out.sequences == [hf_greedy(target, p, 30) for p in prompts]
    assert out.stats.adaptive and 0 <= out.stats.speculative_steps <= out.stats.target_forwards
    assert max(k for row in out.stats.drafted_lengths for k in row) <= 6


@pytest.mark.parametrize("method", ["pard", "vsd"])
def test_auto_follows_the_target_distribution(method):
    from test_engine_sampling import PROMPT, VOCAB, N, empirical_joint, exact_joint, tv, tv_bound

    kw = dict(vocab_size=VOCAB, sharpen=8.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    target = tiny_model("llama", seed=21, **kw)
    draft = tiny_model("pard" if method == "pard" else "draft", seed=23, **kw)
    sampling = SamplingConfig(1.0)
    exact = exact_joint(target, sampling)
    out = SpeculativeDecoder(target, draft, method=method, num_draft_tokens="auto", max_draft_tokens=3).generate(
        [PROMPT] * N, max_new_tokens=3, sampling=sampling, seed=5)
    assert tv(empirical_joint(out.sequences), exact) < tv_bound(exact, N)


def test_k_must_be_an_integer_or_auto(target):
    from pard.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="integer or 'auto'"):
        SpeculativeDecoder(target, tiny_model("pard"), method="pard", num_draft_tokens="many")


def test_what_auto_learned_carries_over_to_the_next_call(target):
    draft = noisy_copy(target, 0.02, seed=9)
    draft.config.pard_token, draft.config.spd_type = 258, "pard"
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens="auto", max_draft_tokens=4)
    decoder.generate(PROMPTS[:1], max_new_tokens=12)
    learned = decoder._choosers[1]
    tried = learned.tried.sum().item()
    out = decoder.generate(PROMPTS[:1], max_new_tokens=12)
    assert decoder._choosers[1] is learned and learned.tried.sum().item() >= tried and learned.draft_seconds
    assert out.sequences == [hf_greedy(target, PROMPTS[0], 12)]

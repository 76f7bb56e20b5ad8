"""`-k auto`: the per-step verification length (cost model, calibration, switching off) — and it stays lossless."""

import pytest
import torch

from helpers import PROMPTS, hf_greedy, noisy_copy
from pard import SamplingConfig, SpeculativeDecoder
from pard.decoding.adaptive import EXPLORATION_BUDGET, MAX_OFF_STEPS, OFF_STEPS, PATIENCE, VerifyLengthChooser
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


def run_drafting_steps(c: VerifyLengthChooser, steps: int, seconds: float, accepted: int = 0) -> None:
    for _ in range(steps):
        assert c.drafting()
        c.observe(1, conf(0.5), torch.tensor([accepted]), 0.01, seconds - 0.01)


def count_plain_steps(c: VerifyLengthChooser) -> int:
    skipped = 0
    while not c.drafting():
        skipped += 1
        c.observe(0, None, torch.tensor([0]), 0.0, 0.1)
    return skipped


def test_switches_off_when_drafting_measurably_loses_and_probes_with_backoff():
    c = chooser({1: 0.1, 2: 0.1})  # plain decoding: 1 token per 0.1 s
    run_drafting_steps(c, PATIENCE - 1, seconds=0.101)  # 1 token per 0.101 s: losing, but not judged yet
    assert c.drafting() and not c.switched_off
    c.observe(1, conf(0.5), torch.tensor([0]), 0.01, 0.091)
    assert c.switched_off
    assert count_plain_steps(c) == OFF_STEPS  # the probe was cheap: the backoff sets the pause
    run_drafting_steps(c, PATIENCE - 1, seconds=0.101)  # the probe lasts PATIENCE steps...
    c.observe(1, conf(0.5), torch.tensor([0]), 0.01, 0.091)
    assert count_plain_steps(c) == 2 * OFF_STEPS  # ...and still loses: twice as long off
    run_drafting_steps(c, 2 * PATIENCE, seconds=0.12, accepted=1)  # 2 tokens per 0.12 s: drafting wins again
    assert not c.switched_off and c.backoff == OFF_STEPS


def test_a_costly_losing_probe_pauses_drafting_until_it_is_within_the_exploration_budget():
    c = chooser({1: 0.1, 2: 0.1})
    run_drafting_steps(c, PATIENCE, seconds=0.4)  # 1 token per 0.4 s: each step 0.3 s more than plain decoding
    off = count_plain_steps(c)
    assert off > MAX_OFF_STEPS  # far longer than the backoff alone would pause
    lost, plain_time = PATIENCE * 0.3, off * 0.1
    # the shortest such pause (one step of slack: the seconds are sums of floats)
    assert lost <= EXPLORATION_BUDGET * plain_time <= lost + EXPLORATION_BUDGET * 0.1 + 1e-9


def test_a_draft_pass_wasted_on_plain_verification_counts_against_drafting():
    c = chooser({1: 0.1, 9: 0.1}, draft=0.05)
    for _ in range(PATIENCE):  # the draft is unsure every time: each step drafts, then verifies nothing
        assert c.drafting() and c.choose(conf(*[0.01] * 8)) == 0
        c.observe(0, conf(*[0.01] * 8), torch.tensor([0]), 0.05, 0.1)
    assert c.switched_off  # 1 token per 0.15 s against 1 per 0.1 s


def test_the_switch_back_is_priced_as_an_ordinary_draft_pass():
    c = chooser({1: 0.1, 2: 0.1}, draft=0.01)
    c.off_for = 1
    assert not c.drafting()
    c.observe(0, None, torch.tensor([0]), 0.0, 0.1)
    assert c.drafting()  # the probe's first pass reads everything decoded meanwhile: 1 s instead of 0.01
    c.observe(1, conf(0.9), torch.tensor([1]), 1.0, 0.1)
    assert c.drafting_seconds == pytest.approx(0.11) and c.draft_seconds == pytest.approx(0.01)


def test_switched_off_carries_over_to_the_next_call():
    c = chooser({1: 0.1, 2: 0.1})
    c.off_for = 5
    c.new_generation()
    assert c.switched_off and c.catching_up


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


def test_a_call_that_starts_switched_off_does_not_read_its_prompt_into_the_draft(target, monkeypatch):
    from pard.decoding.proposers.parallel import ParallelDraftProposer

    draft = noisy_copy(target, 0.02, seed=9)
    draft.config.pard_token, draft.config.spd_type = 258, "pard"
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens="auto", max_draft_tokens=4)
    decoder.generate(PROMPTS[:1], max_new_tokens=6)
    prefills = []
    monkeypatch.setattr(ParallelDraftProposer, "prefill", lambda self, *args: prefills.append(args))
    decoder._choosers[1].off_for = 10  # as if drafting had just lost
    out = decoder.generate(PROMPTS[1:2], max_new_tokens=12)
    assert prefills == [] and out.stats.draft_forwards >= 1  # 10 plain steps, then a probe reads everything
    assert out.sequences == [hf_greedy(target, PROMPTS[1], 12)]

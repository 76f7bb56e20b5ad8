"""Feature drafts (pard.target_features): drafts that also read the target's hidden states.

Lossless by construction -- only the proposals change -- so the greedy-equality matrix and the distribution test run
with a feature draft on every engine path; the features a draft reads at each step are exactly the target's hidden
states at the positions before its tokens (a shifted or stale feature fails the check); which mode runs is decided
once per pair; and the storage and training paths keep the same meaning of "the feature of token t"."""

import json

import pytest
import torch

from helpers import PROMPTS, hf_greedy
from pard import SpeculativeDecoder
from pard.cli import main
from pard.decoding.proposers import ParallelDraftProposer
from pard.target_features import (
    FEATURES_KEY,
    adapter_of,
    attach_adapter,
    feature_binding,
    select_layers,
    target_record,
)
from pard.tiny import tiny_model

MAX_NEW = 20
LAYERS = [-1, 1]


def feature_draft(target, seed: int = 13, std: float = 2.0, layers=LAYERS):
    """A random parallel draft with a random adapter for ``target``: its proposals depend on the features."""
    draft = tiny_model("pard", seed=seed)
    torch.manual_seed(seed)
    attach_adapter(draft, {**target_record(target, layers, "tiny:llama"), "scale": 1.0}, init_std=std)
    return draft


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=11)


@pytest.fixture(scope="module")
def draft(target):
    return feature_draft(target)


@pytest.fixture(params=["eager", "static"])
def engine(request):
    return request.param


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_feature_draft_is_lossless_greedy(target, draft, engine, k, batch):
    prompts = PROMPTS[:batch]
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=k, engine=engine)
    out = decoder.generate(prompts, max_new_tokens=MAX_NEW)
    assert out.stats.target_features == LAYERS
    assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in prompts]


def test_continuous_batching_and_k_auto_with_features(target, draft, engine):
    prompts = PROMPTS + [p[::-1] for p in PROMPTS]
    for kwargs in ({"num_draft_tokens": 4}, {"num_draft_tokens": "auto", "max_draft_tokens": 4}):
        decoder = SpeculativeDecoder(target, draft, method="pard", engine=engine, **kwargs)
        out = decoder.generate(prompts, max_new_tokens=MAX_NEW, max_batch_size=2)
        assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in prompts]


def reference_features(target, sequence: list[int]) -> torch.Tensor:
    """The feature of each token t of ``sequence`` from ONE uncached target pass: h_{t-1} (zero at t = 0)."""
    with torch.no_grad():
        states = target(torch.tensor([sequence]), output_hidden_states=True).hidden_states
    hidden = select_layers(states, tuple(LAYERS))[0]  # (T, F)
    return torch.cat([hidden.new_zeros(1, hidden.shape[1]), hidden[:-1]])


def recorded_reads(monkeypatch):
    """Every draft pass's (committed tokens per row, rows' cache lengths, the features it was given)."""
    reads = []
    draft_logits = ParallelDraftProposer.draft_logits

    def spy(self, sequences, lengths, k, features=None):
        start = self.lm.lengths.clone()
        forward = self.lm.forward

        def capture(ids, logits_at=None, features=None, **kwargs):
            reads.append((sequences.clone(), lengths.clone(), start, k, features))
            return forward(ids, logits_at=logits_at, features=features, **kwargs)

        self.lm.forward = capture
        try:
            return draft_logits(self, sequences, lengths, k, features)
        finally:
            del self.lm.forward

    monkeypatch.setattr(ParallelDraftProposer, "draft_logits", spy)
    return reads


def check_reads(reads, target, shift: int = 0, stale: bool = False) -> None:
    """Each real token a pass reads gets h_{t-1} of its row's committed tokens, each mask its last real token's.
    ``shift`` / ``stale`` corrupt the reference the way a wrong engine would (to show the check can fail)."""
    for sequences, lengths, start, k, features in reads:
        for row in range(len(lengths)):
            n, first = int(lengths[row]), int(start[row])
            reference = reference_features(target, sequences[row, :n].tolist())
            if shift:
                reference = torch.roll(reference, shift, dims=0)
            if stale:
                reference[n - 1] = 0  # the last accepted token's feature never written
            count = n - first
            expected = torch.cat([reference[first:n], reference[n - 1 : n].expand(k - 1, -1)])
            torch.testing.assert_close(features[row, : count + k - 1], expected, atol=1e-4, rtol=0)


def test_the_features_read_are_the_targets_states_before_each_token(target, draft, engine, monkeypatch):
    reads = recorded_reads(monkeypatch)
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=3, engine=engine)
    decoder.generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert len(reads) > 3
    check_reads(reads, target)
    for corrupted in ({"shift": 1}, {"stale": True}):  # the check has power: a wrong engine would fail it
        with pytest.raises(AssertionError):
            check_reads(reads, target, **corrupted)


def test_features_follow_the_target_distribution(engine):
    from test_engine_sampling import PROMPT, VOCAB, N, empirical_joint, exact_joint, tv, tv_bound

    from pard import SamplingConfig

    kw = dict(vocab_size=VOCAB, sharpen=8.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    target, draft = tiny_model("llama", seed=21, **kw), tiny_model("pard", seed=23, **kw)
    attach_adapter(draft, {**target_record(target, LAYERS), "scale": 1.0}, init_std=2.0)
    sampling = SamplingConfig(0.8, top_k=5, top_p=0.9)
    exact = exact_joint(target, sampling)
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=3, engine=engine)
    out = decoder.generate([PROMPT] * N, max_new_tokens=3, sampling=sampling, seed=5)
    assert out.stats.target_features == LAYERS
    assert tv(empirical_joint(out.sequences), exact) < tv_bound(exact, N)


def test_the_features_change_the_proposals_and_the_plain_mode_is_the_plain_draft(target, draft):
    from pard.decoding.cache import CachedLM

    plain = tiny_model("pard", seed=13)  # the same draft without an adapter
    sequences, lengths = torch.tensor([PROMPTS[0]]), torch.tensor([len(PROMPTS[0])])
    features = torch.randn(1, len(PROMPTS[0]), 128)

    def logits(model, reads, given):
        proposer = ParallelDraftProposer(model, [model.config.pard_token], 259, 1,
                                         lm=CachedLM(model, 1, reads_features=reads))
        return proposer.draft_logits(sequences, lengths, 3, given)

    with_features = logits(draft, True, features)
    assert not torch.allclose(with_features, logits(draft, True, torch.zeros_like(features)))  # the adapter is read
    assert torch.equal(logits(draft, False, None), logits(plain, False, None))  # plain mode: exactly the plain draft
    assert torch.equal(logits(draft, True, torch.zeros_like(features)), logits(plain, False, None))  # 0 adds nothing


def test_which_mode_runs_is_decided_once_with_one_line(target, draft, capsys):
    assert feature_binding(target, draft, method="pard").layers == tuple(LAYERS)
    other = tiny_model("llama", seed=99)  # the same shape, other weights
    binding = feature_binding(other, draft, method="pard")
    assert binding.layers is None and "other weights" in binding.reason and "plain PARD draft" in binding.reason
    wider = tiny_model("llama-large", seed=11)
    assert "width 96" in feature_binding(wider, draft, method="pard").reason
    assert feature_binding(target, draft, method="vsd").layers is None
    assert "--no-target-features" in feature_binding(target, draft, method="pard", enabled=False).reason
    assert feature_binding(target, tiny_model("pard"), method="pard") == feature_binding(target, None, method="ar")
    decoder = SpeculativeDecoder(other, draft, method="pard", num_draft_tokens=2, engine="eager")
    out = decoder.generate(PROMPTS[:1], max_new_tokens=4)
    assert out.sequences[0] == hf_greedy(other, PROMPTS[0], 4) and out.stats.target_features is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other weights" in err[0]


def test_a_feature_draft_saves_and_loads_with_its_adapter(target, draft, tmp_path):
    from pard.models import load_model

    draft.save_pretrained(tmp_path / "d")
    loaded = load_model(str(tmp_path / "d"))
    assert json.loads((tmp_path / "d" / "config.json").read_text())[FEATURES_KEY]["layers"] == LAYERS
    assert torch.equal(adapter_of(loaded).proj.weight, adapter_of(draft).proj.weight)
    assert adapter_of(loaded).scale == 1.0 and feature_binding(target, loaded, method="pard").layers == tuple(LAYERS)


def test_the_standardised_adapter_literally_and_through_save_and_load(target, tmp_path):
    """n(f) = (f - mean) / std per dimension, measured on a sample (rows without a feature left out of it); a row
    without a feature stays zero; the statistics travel with the weights."""
    from pard.models import load_model
    from pard.target_features import STANDARD, FeatureAdapter

    adapter = FeatureAdapter(2, 2, scale=0.5, layers=1, norm=STANDARD)
    adapter.measure(torch.tensor([[1.0, 10.0], [3.0, 30.0], [0.0, 0.0]]))  # mean (2, 20), std (sqrt 2, sqrt 200)
    torch.testing.assert_close(adapter.mean, torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(adapter.inv_std, torch.tensor([2.0, 200.0]).rsqrt(), rtol=1e-5, atol=0)
    with torch.no_grad():
        adapter.proj.weight.copy_(torch.eye(2))
    torch.testing.assert_close(adapter(torch.tensor([[3.0, 30.0], [0.0, 0.0]])),
                               torch.tensor([[0.5 / 2**0.5, 0.5 / 2**0.5], [0.0, 0.0]]), rtol=1e-5, atol=1e-7)
    draft = tiny_model("pard", seed=3)
    made = attach_adapter(draft, {**target_record(target, LAYERS), "scale": 0.1, "norm": STANDARD}, init_std=0.5)
    made.measure(torch.randn(64, made.proj.in_features) * 7 + 3)
    draft.save_pretrained(tmp_path / "d")
    loaded = adapter_of(load_model(str(tmp_path / "d")))
    assert loaded.norm == STANDARD
    saved, kept = made.state_dict(), loaded.state_dict()
    assert set(kept) == {"proj.weight", "mean", "inv_std"} and all(torch.equal(kept[n], saved[n]) for n in saved)


def test_export_writes_the_target_independent_form_and_serve_refuses_the_feature_form(draft, tmp_path, capsys):
    from pard.tiny import byte_tokenizer

    draft.save_pretrained(tmp_path / "d")
    byte_tokenizer().save_pretrained(tmp_path / "d")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "d"), "--output", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert "without its feature adapter" in err and len(err.strip().splitlines()) == 1
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert FEATURES_KEY not in config
    from safetensors import safe_open

    with safe_open(str(tmp_path / "e" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "adapter" in k]
    assert main(["serve", "--target", "tiny:llama", "--draft", str(tmp_path / "d"), "--dry-run"]) == 2
    assert "feature adapter" in capsys.readouterr().err
    assert main(["serve", "--target", "tiny:llama", "--draft", str(tmp_path / "e"), "--dry-run",
                 "--no-validate"]) == 0


# --- storing the target's states with regenerated data, and training on them -----------------------------------

CODE = ["def add(a, b):\n    return a + b\n", "class Point:\n    x = 1\n    y = 2\n",
        "for i in range(3):\n    print(i * i)\n"] * 3


@pytest.fixture
def regenerated(tmp_path):
    """SmolLM2-like flow on the embedded family: zoo:large continues stdlib snippets and keeps layers -1 and 6."""
    source = tmp_path / "code.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE))
    out = tmp_path / "regen.jsonl"
    args = ["regenerate", "--target", "zoo:large", "--data", str(source), "--output", str(out), "--max-new-tokens",
            "12", "--prefix-tokens", "6", "--batch-size", "2", "--top-logprobs", "4", "--store-features", "-1", "6"]
    return out, args


def test_stored_features_are_the_targets_states_and_resume_exactly(regenerated, capsys):
    from pard.feature_store import FeatureStore
    from pard.models import load_model

    out, args = regenerated
    assert main([*args, "--limit", "4"]) == 0  # interrupted after 4 records...
    with open(f"{out}.features", "ab") as f:
        f.write(b"\0" * 1000)  # ...with rows written whose record never was (a crash between the two writes)
    assert main(args) == 0  # resumed
    resumed = (out.read_bytes(), (out.parent / "regen.jsonl.features").read_bytes())
    (out.parent / "regen.jsonl").unlink()
    (out.parent / "regen.jsonl.features").unlink()
    assert main(args) == 0  # in one go
    assert (out.read_bytes(), (out.parent / "regen.jsonl.features").read_bytes()) == resumed
    store, target = FeatureStore(out), load_model("zoo:large")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    entry = records[1]["target_features"][0]
    prompt = target.config  # noqa: F841 (documentation: the prompt is the record's first `offset` tokens)
    from pard import load_tokenizer

    tokenizer = load_tokenizer("zoo:large")
    ids = tokenizer(CODE[1])["input_ids"][:entry["offset"]] + entry["tokens"]
    with torch.no_grad():
        states = target(torch.tensor([ids]), output_hidden_states=True).hidden_states
    expected = select_layers(states, (-1, 6))[0, : len(ids) - 1]  # positions 0 .. T-2
    got = store.rows(torch.arange(entry["row"], entry["row"] + entry["rows"]).numpy())
    assert entry["rows"] == len(ids) - 1
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)  # stored in bf16
    capsys.readouterr()
    assert main([*args[:-2], "-1"]) == 2  # resumed with other layers: refused, nothing changed
    assert "layers [-1, 6]" in capsys.readouterr().err
    assert out.read_bytes() == resumed[0]


def test_each_packed_position_reads_its_anchors_feature_from_the_store_and_from_a_target_pass(regenerated):
    """The stored route (--target-features data) and the target route (--target-features zoo:large) give every
    kept position of a COD sample the same feature: h_{anchor - 1}. (One record per sequence: in a packed chunk a
    target pass also sees the records before, which the stored states, computed per record, did not.)"""
    import numpy as np

    from pard import load_tokenizer
    from pard.feature_store import open_feature_stores
    from pard.models import load_model
    from pard.training.cod import CODConfig
    from pard.training.collator import CODCollator
    from pard.training.config import DataConfig
    from pard.training.data import load_training_sequences
    from pard.training.trainer import CODDataset, PardTrainer

    out, args = regenerated
    assert main(args) == 0
    stores, offsets, record = open_feature_stores([str(out)])
    assert record["layers"] == [-1, 6]
    tokenizer = load_tokenizer("zoo:large")
    chunks = load_training_sequences([str(out)], tokenizer, DataConfig(max_seq_len=32, packing=False), 3,
                                     feature_offsets=offsets)
    cod = CODConfig(3, 1.0, 1.0)
    stored = CODDataset(chunks, cod, [4], seed=0, features="stored")
    computed = CODDataset(chunks, cod, [4], seed=0, features="target")
    samples = [stored[0], computed[0]]
    assert np.array_equal(samples[0].anchors, samples[1].anchors) and (samples[0].depths > 0).any()
    by_store = CODCollator(feature_store=stores)([samples[0]])["target_features"][0]
    batch = CODCollator(with_source=True)([samples[1]])
    trainer = PardTrainer.__new__(PardTrainer)  # only its feature gathering
    trainer.feature_target, trainer.feature_layers = load_model("zoo:large").eval(), (-1, 6)
    by_target = trainer._target_features(batch, batch["teacher_input_ids"])[0]
    known = samples[0].feature_rows >= 0  # tokens whose stored feature exists (text re-tokenized as written)
    assert known.mean() > 0.5
    torch.testing.assert_close(by_store[known], by_target[known], atol=0.05, rtol=0.02)


def test_training_a_feature_draft_on_stored_states_then_decoding_with_it(regenerated, tmp_path):
    from pard.models import load_model

    out, args = regenerated
    assert main(args) == 0
    draft = tmp_path / "draft"
    assert main(["train", "--model", "zoo:draft", "--data", str(out), "--output", str(draft), "--target-features",
                 "data", "--feature-layers", "-1", "-k", "3", "--max-steps", "2", "--batch-size", "2",
                 "--max-seq-len", "24", "--no-progress", "--cat-weighting", "--distill-from", "data",
                 "--ce-weight", "0.1"]) == 0
    training = json.loads((draft / "pard_training.json").read_text())
    assert training["target_features"] == "data" and training["cat_weighting"] and training["ce_weight"] == 0.1
    model = load_model(str(draft))
    assert adapter_of(model) is not None and model.config.pard_target_features["layers"] == [-1]
    assert model.config.pard_target_features["norm"] == "standard" and adapter_of(model).inv_std.min() < 0.9
    target = load_model("zoo:large")
    prompt = [5, 6, 7, 8, 9, 10]
    out_seq = SpeculativeDecoder(target, model, method="pard", num_draft_tokens=3, engine="static").generate(
        [prompt], max_new_tokens=12)
    assert out_seq.stats.target_features == [-1] and out_seq.sequences[0] == hf_greedy(target, prompt, 12)


def test_cat_weights_literally():
    import numpy as np

    from pard.training.loss import cat_weights

    gold = np.log([1.0, 0.5, 0.25, 0.8, 1.0])  # p(x_t | x_<t) for t = 0..4
    anchors, depths = np.array([0, 1, 2, 0, 1, 0]), np.array([0, 0, 0, 1, 1, 2])
    # depth d at anchor j: prod p(x_{j+1}) .. p(x_{j+d})
    np.testing.assert_allclose(cat_weights(gold, anchors, depths), [1, 1, 1, 0.5, 0.25, 0.125], rtol=1e-6)


def test_bench_measures_drafts_side_by_side_with_and_without_features(target, draft, tmp_path, capsys):
    from pard.tiny import byte_tokenizer

    draft.save_pretrained(tmp_path / "features")
    byte_tokenizer().save_pretrained(tmp_path / "features")
    out = tmp_path / "bench"
    assert main(["bench", "--targets", "tiny:llama", "--draft", "tiny:pard", str(tmp_path / "features"),
                 "--methods", "ar", "pard", "pard-plain", "--datasets", "humaneval", "-k", "3", "--num-prompts",
                 "2", "--max-new-tokens", "6", "--repeats", "1", "--engines", "eager", "--output", str(out)]) == 0
    rows = {m["method"]: m for m in json.loads((out / "summary.json").read_text())["measurements"]}
    features = f"pard · {tmp_path / 'features'}"
    assert set(rows) == {"ar", "pard · tiny:pard", features, "pard-plain · tiny:pard",
                         f"pard-plain · {tmp_path / 'features'}"}
    assert all(m["mismatches"] == 0 for name, m in rows.items() if name != "ar")
    assert features in (out / "results.md").read_text()


def test_reading_some_layers_while_storing_others(target, draft):
    """regenerate with a feature draft: the target returns the union of the layers; each side gets its own."""
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=3, engine="static",
                                 feature_layers=[0])
    assert decoder.hidden_layers == (-1, 1, 0)
    out = decoder.generate(PROMPTS, max_new_tokens=8, return_features=True)
    assert out.sequences == [hf_greedy(target, p, 8) for p in PROMPTS] and out.stats.target_features == LAYERS
    embeddings = target.get_input_embeddings().weight
    for prompt, tokens, features in zip(PROMPTS, out.sequences, out.features):
        sequence = prompt + tokens
        assert features.shape == (len(sequence) - 1, 64)
        torch.testing.assert_close(features, embeddings[sequence[:-1]])  # layer 0: the embeddings


@pytest.mark.slow
def test_compiled_steps_with_a_feature_draft_are_lossless(target, draft):
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=3, engine="compiled")
    for prompts in (PROMPTS[:1], PROMPTS):
        out = decoder.generate(prompts, max_new_tokens=MAX_NEW)
        assert out.stats.target_features == LAYERS
        assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in prompts]

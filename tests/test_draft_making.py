"""Making drafts for a family without a small model: slices of a bigger model, reduced draft vocabularies, tensors
borrowed from the base — each lossless in decoding, and reachable from `pard train`."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

from helpers import PROMPTS, as_pard_draft, hf_greedy, noisy_copy
from pard import SamplingConfig, SpeculativeDecoder, load_model, load_tokenizer
from pard.cli import main
from pard.draft_vocab import SubsetHead, attach_subset_head, most_frequent_tokens, subset_head_of
from pard.errors import InvalidArgumentError
from pard.slicing import parse_layers, slice_layers
from pard.tiny import tiny_model

MAX_NEW = 20


def reduced(model, keep):
    draft = copy.deepcopy(model)
    attach_subset_head(draft, keep)
    return draft.eval()


def test_subset_head_literal():
    head = SubsetHead(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([3, 1]), vocab_size=5)
    h = torch.tensor([[2.0, 1.0]])  # (1, H)
    assert head.train()(h).tolist() == [[2.0, 2.0]]  # training: the subset's own logits (1, N)
    inf = float("-inf")
    assert head.eval()(h).tolist() == [[inf, 2.0, inf, 2.0, inf]]  # eval: the vocabulary (1, V)
    assert head.to_subset(torch.tensor([1, 3, 4, -100]), -100).tolist() == [1, 0, -100, -100]


def test_most_frequent_tokens_keeps_the_always_ids():
    assert most_frequent_tokens([[5, 5, 6, 7, 7, 7], [6, 8]], 3, always=[0]) == [0, 5, 7]  # 5 and 6 tie: the smaller id


def test_slice_keeps_chosen_layers_and_decodes_with_a_cache():
    model = tiny_model("llama-large", seed=3)
    full = copy.deepcopy(model)
    assert torch.equal(slice_layers(copy.deepcopy(model), [0, 1, 2])(torch.tensor([PROMPTS[0]])).logits,
                       full(torch.tensor([PROMPTS[0]])).logits)
    sliced = slice_layers(model, [2, 0])
    assert sliced.config.num_hidden_layers == 2 and [la.self_attn.layer_idx for la in sliced.model.layers] == [0, 1]
    ids = torch.tensor([PROMPTS[2]])
    cached = hf_greedy(sliced, PROMPTS[2], 8)  # uses the KV cache: layer numbers must index it correctly
    uncached = []
    for _ in range(8):
        nxt = sliced(ids).logits[0, -1].argmax().item()
        uncached.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert cached == uncached
    with pytest.raises(InvalidArgumentError):
        slice_layers(tiny_model("llama"), [0, 5])
    assert parse_layers("0-2,7") == [0, 1, 2, 7]


@pytest.mark.parametrize("method", ["vsd", "pard"])
@pytest.mark.parametrize("k", [1, 4])
def test_reduced_vocabulary_draft_is_lossless_greedy(target, method, k):
    keep = list(range(0, 256, 2)) + [257]  # half the bytes
    base = noisy_copy(target, 0.02, seed=5)
    draft = reduced(as_pard_draft(base, 258) if method == "pard" else base, keep)
    out = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=k).generate(PROMPTS, max_new_tokens=MAX_NEW)
    assert out.sequences == [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]
    proposals = draft(torch.tensor([PROMPTS[0]])).logits.argmax(-1)
    assert set(proposals.flatten().tolist()) <= set(keep)  # it never proposes outside its subset


@pytest.mark.parametrize("method", ["vsd", "pard"])
def test_reduced_vocabulary_draft_follows_the_target_distribution(method):
    from test_engine_sampling import PROMPT, VOCAB, N, empirical_joint, exact_joint, tv, tv_bound

    kw = dict(vocab_size=VOCAB, sharpen=8.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    target = tiny_model("llama", seed=21, **kw)
    draft = reduced(tiny_model("pard" if method == "pard" else "draft", seed=23, **kw), [0, 2, 3, 5, 6])
    sampling = SamplingConfig(1.0)
    exact = exact_joint(target, sampling)
    out = SpeculativeDecoder(target, draft, method=method, num_draft_tokens=3).generate(
        [PROMPT] * N, max_new_tokens=3, sampling=sampling, seed=99)
    assert tv(empirical_joint(out.sequences), exact) < tv_bound(exact, N)
    assert 0.05 < out.stats.acceptance_per_position[0] < 0.95


def sliced_draft(tmp_path):
    """A tiny base and a draft trained as a slice of it (layers 0 and 2, a 16-token head, embeddings borrowed)."""
    from test_training import CODE

    code_file = tmp_path / "code.jsonl"
    code_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE))
    base = tmp_path / "base"
    tiny_model("llama-large", seed=4).save_pretrained(base)
    from pard.tiny import byte_tokenizer

    byte_tokenizer().save_pretrained(base)
    out = tmp_path / "draft"
    code = main(["train", "--model", str(base), "--slice-layers", "0,2", "--draft-vocab", "16", "--freeze-embeddings",
                 "--distill-from", str(base), "--data", str(code_file), "--output", str(out), "-k", "3",
                 "--max-steps", "2", "--batch-size", "2", "--max-seq-len", "32", "--lr", "1e-3", "--no-progress"])
    assert code == 0
    return base, out, code_file


def test_train_a_sliced_reduced_draft_that_borrows_its_embeddings(tmp_path):
    base, out, _ = sliced_draft(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["draft_vocab_size"]) == (2, 16)
    assert config["pard_base_model"] == str(base) and config["pard_base_tensors"] == ["model.embed_tokens.weight"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" not in f.keys() and f.get_slice("lm_head.weight").get_shape() == [16, 96]
    draft = load_model(str(out), device="cpu")
    head = subset_head_of(draft)
    assert head is not None and len(head.token_ids) == 16 and not draft.training
    assert torch.equal(draft.get_input_embeddings().weight, load_model(str(base)).get_input_embeddings().weight)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a borrowing draft may ship without a tokenizer:
        (out / name).unlink()  # its base's is used (zoo:smollm2-pard does this)
    assert load_tokenizer(str(out)).get_vocab() == load_tokenizer(str(base)).get_vocab()
    target = load_model(str(base), device="cpu")
    out_ids = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=4).generate(
        PROMPTS, max_new_tokens=MAX_NEW).sequences
    assert out_ids == [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]


def test_a_borrowing_draft_made_a_feature_draft_by_training_its_adapter_alone(tmp_path):
    """--adapter-only on a trained draft (zoo:smollm2-pard's way): every tensor of the draft stays as it was, so its
    plain mode is the draft itself; the adapter learns; the result still borrows its embeddings from the base."""
    from safetensors.torch import load_file

    from pard.target_features import adapter_of

    base, draft, code_file = sliced_draft(tmp_path)
    out = tmp_path / "feature-draft"
    assert main(["train", "--model", str(draft), "--target-features", str(base), "--feature-layers", "-1", "1",
                 "--adapter-only", "--feature-drop", "0", "--data", str(code_file), "--output", str(out), "-k", "3",
                 "--max-steps", "3", "--batch-size", "2", "--max-seq-len", "32", "--lr", "1e-2", "--no-progress"]) == 0
    before, after = load_file(str(draft / "model.safetensors")), load_file(str(out / "model.safetensors"))
    adapter = {f"pard_feature_adapter.{name}" for name in ("proj.weight", "mean", "inv_std")}
    assert set(after) == {*before, *adapter}  # the embeddings are still not stored
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert after["pard_feature_adapter.proj.weight"].abs().sum() > 0
    assert json.loads((out / "config.json").read_text())["pard_base_model"] == str(base)
    target, model = load_model(str(base)), load_model(str(out))
    assert adapter_of(model) is not None
    out_ids = SpeculativeDecoder(target, model, method="pard", num_draft_tokens=4).generate(
        PROMPTS, max_new_tokens=MAX_NEW)
    assert out_ids.stats.target_features == [-1, 1]
    assert out_ids.sequences == [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]
    with pytest.raises(InvalidArgumentError, match="--adapter-only needs --target-features"):
        main(["--debug", "train", "--model", str(draft), "--adapter-only", "--data", str(code_file), "--output",
              str(tmp_path / "refused")])


def test_a_feature_draft_trained_further_keeps_its_adapter_for_the_same_target_only(tmp_path):
    """`pard train --model FEATURE_DRAFT --target-features ...` continues the adapter it has (weights and
    standardisation) when it reads the same target layers; other layers start a new, zero adapter. At a learning
    rate of 1e-12 the continued adapter is the one trained before, and a new one stays about zero."""
    from safetensors.torch import load_file

    base, draft, code_file = sliced_draft(tmp_path)
    common = ["--data", str(code_file), "-k", "3", "--max-steps", "2", "--batch-size", "2", "--max-seq-len", "32",
              "--no-progress", "--target-features", str(base)]
    first = tmp_path / "features"
    assert main(["train", "--model", str(draft), *common, "--feature-layers", "-1", "1", "--adapter-only",
                 "--lr", "1e-2", "--output", str(first)]) == 0
    again, other = tmp_path / "again", tmp_path / "other-layers"
    assert main(["train", "--model", str(first), *common, "--feature-layers", "-1", "1", "--lr", "1e-12",
                 "--output", str(again)]) == 0
    assert main(["train", "--model", str(first), *common, "--feature-layers", "-1", "--lr", "1e-12",
                 "--output", str(other)]) == 0
    trained, kept, new = (load_file(str(d / "model.safetensors")) for d in (first, again, other))
    adapter = [name for name in trained if name.startswith("pard_feature_adapter.")]
    assert len(adapter) == 3 and trained["pard_feature_adapter.proj.weight"].abs().sum() > 0
    assert all(torch.allclose(trained[name], kept[name], atol=1e-6) for name in adapter)
    assert new["pard_feature_adapter.proj.weight"].shape[1] == trained["pard_feature_adapter.proj.weight"].shape[1] // 2
    assert new["pard_feature_adapter.proj.weight"].abs().max() < 1e-6
    assert json.loads((other / "config.json").read_text())["pard_target_features"]["layers"] == [-1]


def test_export_refuses_a_reduced_vocabulary_draft_and_leaves_the_output_alone(tmp_path, capsys):
    draft = reduced(as_pard_draft(tiny_model("llama", seed=2), 258), list(range(100)))
    draft.save_pretrained(tmp_path / "draft")
    from pard.tiny import byte_tokenizer

    byte_tokenizer().save_pretrained(tmp_path / "draft")
    assert load_model(str(tmp_path / "draft")).get_output_embeddings().token_ids.tolist() == list(range(100))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    capsys.readouterr()  # the command's own output only (save_pretrained may draw a progress bar)
    assert main(["export", str(tmp_path / "draft"), "--output", str(out), "--overwrite"]) != 0
    err = capsys.readouterr().err.strip()
    assert "reduced draft vocabulary (100 of 259 tokens)" in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

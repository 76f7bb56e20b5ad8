"""Loading by directory, draft kind from config.json, compatibility checks, bad input."""

import json

import pytest
import torch

from helpers import hf_greedy
from pard import (
    InvalidArgumentError,
    ModelLoadError,
    NotAParallelDraftError,
    PromptTooLongError,
    SpeculativeDecoder,
    VocabularyMismatchError,
    draft_method,
    load_pair,
)
from pard.tiny import BYTE_VOCAB, byte_tokenizer, tiny_model
from pard.vocab import check_compatible


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A target, an AR draft and a PARD draft saved as ordinary HF directories (safetensors + tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    tok = byte_tokenizer()
    paths = {}
    for name, spec in {"target": "llama", "draft": "draft", "pard": "pard"}.items():
        paths[name] = root / name
        tiny_model(spec, seed=len(name)).save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def test_saved_with_safetensors_and_pard_token(saved):
    assert (saved["pard"] / "model.safetensors").exists()
    config = json.loads((saved["pard"] / "config.json").read_text())
    assert config["pard_token"] == BYTE_VOCAB + 2 and config["spd_type"] == "pard"


def test_load_pair_from_directories_detects_the_method(saved):
    pair = load_pair(str(saved["target"]), str(saved["pard"]), device="cpu")
    assert pair.method == "pard"
    assert load_pair(str(saved["target"]), str(saved["draft"]), device="cpu").method == "vsd"
    assert pair.target.dtype == torch.float32 and pair.target.device.type == "cpu"
    prompt = pair.tokenizer("def f(x):")["input_ids"]
    out = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=4).generate(
        [prompt], max_new_tokens=12
    )
    assert out.sequences[0] == hf_greedy(pair.target, prompt, 12)


def test_dtype_option(saved):
    pair = load_pair(str(saved["target"]), device="cpu", dtype="bfloat16")
    assert pair.target.dtype == torch.bfloat16
    with pytest.raises(InvalidArgumentError):
        load_pair(str(saved["target"]), device="cpu", dtype="float8")


def test_draft_method_from_config():
    assert draft_method(tiny_model("pard").config) == "pard"
    assert draft_method(tiny_model("draft").config) == "vsd"
    config = tiny_model("draft").config
    config.pard_token = True  # not an integer id
    assert draft_method(config) == "vsd"


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file or directory"):
        load_pair(str(tmp_path / "missing-model"))
    with pytest.raises(ModelLoadError, match="unknown tiny model"):
        load_pair("tiny:nope")


def test_vocabulary_mismatch_by_size():
    with pytest.raises(VocabularyMismatchError, match="sizes differ"):
        SpeculativeDecoder(tiny_model("llama"), tiny_model("draft", vocab_size=300), method="vsd")


def test_vocabulary_mismatch_by_tokenizer():
    target_tok = byte_tokenizer()
    other = byte_tokenizer()
    other.add_tokens(["<extra>"])  # a superset is fine (e.g. an added mask token)...
    check_compatible(tiny_model("llama"), tiny_model("draft"), target_tok, other)
    from transformers import AutoTokenizer  # ...a different numbering is not

    class Shuffled:
        def get_vocab(self):
            vocab = target_tok.get_vocab()
            return {tok: (i + 1) % len(vocab) for tok, i in vocab.items()}

    with pytest.raises(VocabularyMismatchError, match="numbered differently"):
        check_compatible(tiny_model("llama"), tiny_model("draft"), target_tok, Shuffled())
    del AutoTokenizer


def test_different_vocab_padding_is_fine_with_matching_tokenizers():
    """Qwen2.5 drafts and targets pad their embedding tables differently; the tokenizer decides."""
    target = tiny_model("llama", seed=5)
    draft = tiny_model("pard", seed=6, vocab_size=BYTE_VOCAB + 40)
    tok = byte_tokenizer()
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens=3, target_tokenizer=tok,
                                 draft_tokenizer=tok)
    out = decoder.generate([[3, 4, 5]], max_new_tokens=10)
    assert out.sequences[0] == hf_greedy(target, [3, 4, 5], 10)


def test_pard_without_mask_token():
    with pytest.raises(NotAParallelDraftError, match="pard_token"):
        SpeculativeDecoder(tiny_model("llama"), tiny_model("draft"), method="pard")


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one(k):
    with pytest.raises(InvalidArgumentError, match="K must be >= 1"):
        SpeculativeDecoder(tiny_model("llama"), tiny_model("pard"), method="pard", num_draft_tokens=k)


def test_unknown_method_and_missing_draft():
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        SpeculativeDecoder(tiny_model("llama"), tiny_model("pard"), method="eagle")
    with pytest.raises(InvalidArgumentError, match="needs a draft"):
        SpeculativeDecoder(tiny_model("llama"), method="vsd")


def test_prompt_longer_than_context():
    decoder = SpeculativeDecoder(tiny_model("llama"), tiny_model("pard"), method="pard")
    with pytest.raises(PromptTooLongError, match="context window is 512"):
        decoder.generate([[1] * 600], max_new_tokens=4)


def test_empty_prompt_and_bad_budget():
    decoder = SpeculativeDecoder(tiny_model("llama"), tiny_model("pard"), method="pard")
    with pytest.raises(InvalidArgumentError, match="empty"):
        decoder.generate([[1, 2], []], max_new_tokens=4)
    with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
        decoder.generate([[1, 2]], max_new_tokens=0)

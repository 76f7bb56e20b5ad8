"""Official PARD checkpoint layouts in, vLLM-ready drafts out."""

import json

import pytest

from helpers import hf_greedy
from pard.cli import main
from pard.errors import InvalidArgumentError, NotAParallelDraftError, VocabularyMismatchError
from pard.export import export_draft
from pard.tiny import BYTE_VOCAB, byte_tokenizer, tiny_model
from pard.vllm import serve_command, speculative_config

RESERVED = [f"<|reserved_special_token_{i}|>" for i in range(4)]


def llama3_like(tmp_path):
    """Llama-3 layout: reserved special tokens in the tokenizer; pard_token is one of them (like 128020)."""
    tok = byte_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": RESERVED})
    vocab = len(tok)
    mask = tok.convert_tokens_to_ids(RESERVED[2])
    target, draft = tiny_model("llama", seed=31, vocab_size=vocab), tiny_model("draft", seed=32, vocab_size=vocab)
    draft.config.pard_token, draft.config.spd_type = mask, "pard"
    for name, model in [("target", target), ("draft", draft)]:
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    return tmp_path / "target", tmp_path / "draft", mask


def qwen25_like(tmp_path):
    """Qwen2.5 layout: the embedding table is padded past the tokenizer; pard_token is the first unused row
    (like 151665 = len(tokenizer))."""
    tok = byte_tokenizer()
    target = tiny_model("qwen2", seed=33, vocab_size=300)
    draft = tiny_model("qwen2", seed=34, vocab_size=280, hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    draft.config.pard_token, draft.config.spd_type = len(tok), "pard"
    for name, model in [("target", target), ("draft", draft)]:
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    return tmp_path / "target", tmp_path / "draft", len(tok)


@pytest.mark.parametrize("layout", [llama3_like, qwen25_like], ids=["llama3", "qwen2.5"])
def test_official_layout_drafts_with_cli(tmp_path, capsys, layout):
    target_dir, draft_dir, mask = layout(tmp_path)
    code = main(["generate", "--target", str(target_dir), "--draft", str(draft_dir), "-k", "4",
                 "--max-new-tokens", "20", "--no-chat-template", "--json", "hello"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["method"] == "pard"
    from pard.models import load_model

    target = load_model(str(target_dir), device="cpu")
    prompt = byte_tokenizer()("hello")["input_ids"]
    reference = hf_greedy(target, prompt, 20)
    eos = byte_tokenizer().eos_token_id
    assert result["token_ids"] == (reference[: reference.index(eos) + 1] if eos in reference else reference)
    out = export_draft(str(draft_dir), tmp_path / "exported", target=str(target_dir))
    assert json.loads((out / "config.json").read_text())["pard_token"] == mask


def test_export_converts_another_key_and_writes_card(tmp_path):
    draft = tiny_model("draft", seed=40)
    draft.config.mask_token_id = BYTE_VOCAB + 2  # a draft from elsewhere, mask id under another name
    draft.save_pretrained(tmp_path / "src")
    byte_tokenizer().save_pretrained(tmp_path / "src")
    with pytest.raises(NotAParallelDraftError):  # no mask id under any known key
        export_draft("tiny:draft", tmp_path / "x")
    out = export_draft(str(tmp_path / "src"), tmp_path / "out", target="tiny:llama", num_draft_tokens=6)
    config = json.loads((out / "config.json").read_text())
    assert config["pard_token"] == BYTE_VOCAB + 2 and config["spd_type"] == "pard"
    assert "mask_token_id" not in config
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    card = (out / "README.md").read_text()
    assert '"num_speculative_tokens": 6' in card and '"parallel_drafting": true' in card
    assert "vllm serve tiny:llama" in card


def test_export_refuses_pairs_that_do_not_fit(tmp_path):
    # A mask token added to the draft's vocabulary lies outside the target's.
    draft = tiny_model("pard", seed=41, vocab_size=BYTE_VOCAB + 4)
    draft.config.pard_token = BYTE_VOCAB + 3
    draft.save_pretrained(tmp_path / "d")
    tok = byte_tokenizer()
    tok.add_tokens(["<|pard_mask|>"], special_tokens=True)
    tok.save_pretrained(tmp_path / "d")
    with pytest.raises(InvalidArgumentError, match="outside the target's vocabulary"):
        export_draft(str(tmp_path / "d"), tmp_path / "o", target="tiny:llama")
    # A target from another family.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.WordLevel({f"w{i}": i for i in range(BYTE_VOCAB + 3)}, unk_token="w0"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    tiny_model("llama").save_pretrained(tmp_path / "t")
    PreTrainedTokenizerFast(tokenizer_object=other).save_pretrained(tmp_path / "t")
    with pytest.raises(VocabularyMismatchError):
        export_draft("tiny:pard", tmp_path / "o2", target=str(tmp_path / "t"))


def test_export_carries_training_settings(tmp_path):
    code_file = tmp_path / "code.jsonl"
    code_file.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) + "\n" for i in range(40)))
    assert main(["train", "--model", "tiny:draft", "--data", str(code_file), "--output", str(tmp_path / "trained"),
                 "-k", "4", "--r", "0.6", "--r-min", "0.25", "--max-steps", "2", "--batch-size", "2",
                 "--max-seq-len", "32", "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "trained"), "--output", str(tmp_path / "exported"), "--target",
                 "tiny:llama"]) == 0
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "| K_train | 4 |" in card and "| COD r / r_min | 0.6 / 0.25 |" in card and str(code_file) in card
    assert (tmp_path / "exported" / "pard_training.json").exists()


def test_vllm_config_and_command():
    assert speculative_config("d", 8) == {
        "model": "d", "num_speculative_tokens": 8, "method": "draft_model", "parallel_drafting": True,
    }
    argv = serve_command("meta-llama/Llama-3.1-8B-Instruct", "amd/PARD-Llama-3.2-1B", 12, tensor_parallel_size=2,
                         extra_args=["--max-model-len", "8192"])
    assert argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert json.loads(argv[argv.index("--speculative-config") + 1])["num_speculative_tokens"] == 12
    assert argv[-4:] == ["--tensor-parallel-size", "2", "--max-model-len", "8192"]


def test_serve_dry_run_and_missing_vllm(tmp_path, capsys):
    export_draft("tiny:pard", tmp_path / "d")
    assert main(["serve", "--target", "tiny:llama", "--draft", str(tmp_path / "d"), "--k", "5", "--dry-run", "--",
                 "--port", "8001"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("vllm serve tiny:llama --speculative-config") and line.endswith("--port 8001")
    assert '"num_speculative_tokens": 5' in line
    code = main(["serve", "--target", "tiny:llama", "--draft", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err == "pard: error: vLLM is not installed; install it with: pip install 'pard-spec[vllm]'"


def test_serve_refuses_unexported_key(tmp_path, capsys):
    draft = tiny_model("draft")
    draft.config.mask_token_id = BYTE_VOCAB + 2
    draft.save_pretrained(tmp_path / "d")
    byte_tokenizer().save_pretrained(tmp_path / "d")
    assert main(["serve", "--target", "tiny:llama", "--draft", str(tmp_path / "d"), "--dry-run"]) != 0
    assert "run `pard export`" in capsys.readouterr().err

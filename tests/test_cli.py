"""`pard generate`: streaming text + stats, --json, and one-line errors with a non-zero exit code."""

import json

import pytest

from helpers import hf_greedy
from pard.cli import main
from pard.tiny import byte_tokenizer, tiny_model


def test_generate_json(capsys):
    code = main(["generate", "--target", "tiny:llama", "--draft", "tiny:pard", "-k", "4", "--max-new-tokens", "16",
                 "--json", "--no-chat-template", "hello"])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object on stdout
    assert set(result) == {"text", "token_ids", "stats"}
    for key in ["tokens", "target_forwards", "mean_accepted_length", "acceptance_per_position",
                "tokens_per_second", "draft_seconds", "verify_seconds"]:
        assert key in result["stats"]
    assert result["stats"]["method"] == "pard"  # inferred from the draft's pard_token
    prompt = byte_tokenizer()("hello")["input_ids"]
    reference = hf_greedy(tiny_model("llama"), prompt, 16)
    eos = byte_tokenizer().eos_token_id
    expected = reference[: reference.index(eos) + 1] if eos in reference else reference
    assert result["token_ids"] == expected
    assert result["stats"]["tokens"] == len(expected)


def test_generate_streams_text_then_stats(capsys):
    code = main(["generate", "--target", "tiny:llama", "--draft", "tiny:draft", "--max-new-tokens", "8",
                 "--temperature", "0.7", "--top-p", "0.9", "--seed", "3", "hello"])
    assert code == 0
    out = capsys.readouterr().out
    assert "vsd" in out and "mean accepted length" in out and "tokens/s" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--draft", "tiny:draft", "--method", "pard"], "pard_token"),
        (["--draft", "tiny:pard", "-k", "0"], "K must be >= 1"),
        (["--draft", "tiny:pard", "--top-p", "2"], "top_p"),
        (["--draft", "tiny:nope"], "unknown tiny model"),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    code = main(["generate", "--target", "tiny:llama", *argv, "hi"])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_empty_prompt_and_long_prompt(capsys):
    assert main(["generate", "--target", "tiny:llama", "--no-chat-template", ""]) != 0
    assert "empty" in capsys.readouterr().err
    assert main(["generate", "--target", "tiny:llama", "x" * 700]) != 0
    assert "context window" in capsys.readouterr().err


def test_vocabulary_mismatch_cli(tmp_path, capsys):
    tok = byte_tokenizer()
    tiny_model("llama").save_pretrained(tmp_path / "t")
    tok.save_pretrained(tmp_path / "t")
    draft = tiny_model("pard", vocab_size=400)
    draft.save_pretrained(tmp_path / "d")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.WordLevel({f"w{i}": i for i in range(400)}, unk_token="w0"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=other).save_pretrained(tmp_path / "d")
    assert main(["generate", "--target", str(tmp_path / "t"), "--draft", str(tmp_path / "d"), "hi"]) != 0
    assert "does not match" in capsys.readouterr().err


def test_debug_shows_traceback():
    from pard.errors import NotAParallelDraftError

    with pytest.raises(NotAParallelDraftError):
        main(["--debug", "generate", "--target", "tiny:llama", "--draft", "tiny:draft", "--method", "pard", "hi"])

"""Target-aligned drafts: `pard regenerate` (resumable, lossless) and distillation (`--distill-from`)."""

import copy
import json

import numpy as np
import pytest
import torch

from helpers import hf_greedy
from pard.cli import main
from pard.decoding import SamplingConfig
from pard.regenerate import RegenerateConfig, regenerate
from pard.tiny import byte_tokenizer, tiny_model
from pard.training import CODConfig, build_cod_sample
from pard.training.collator import CODCollator
from pard.training.loss import draft_columns, kd_loss, teacher_distributions

TEXTS = [f"def function_{i}(x):\n    return x + {i}\n" for i in range(11)]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "src.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def run(path, out, **kw):
    kw = {"batch_size": 3, **kw}
    config = RegenerateConfig(target="tiny:llama", data=[str(path)], output=str(out), prefix_tokens=8,
                              max_new_tokens=12, **kw)
    return regenerate(config)


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_greedy_regeneration_equals_plain_target_decoding(tmp_path, text_file):
    plain = records(run(text_file, tmp_path / "plain.jsonl"))
    fast = records(run(text_file, tmp_path / "pard.jsonl", draft="tiny:pard", num_draft_tokens=4))
    assert [r["text"] for r in plain] == [r["text"] for r in fast]
    assert [r["id"] for r in plain] == [f"r{i}" for i in range(len(TEXTS))]  # linked to the source records
    tok, target = byte_tokenizer(), tiny_model("llama")
    prefix = tok(TEXTS[0])["input_ids"][:8]
    continuation = [t for t in hf_greedy(target, prefix, 12)]
    eos = tok.eos_token_id
    continuation = continuation[: continuation.index(eos)] if eos in continuation else continuation
    assert plain[0]["text"] == tok.decode(prefix + continuation, skip_special_tokens=True)


@pytest.mark.parametrize("cut_at", [2, 7])
def test_resume_after_interruption_without_duplicates_or_loss(tmp_path, text_file, cut_at):
    full = records(run(text_file, tmp_path / "full.jsonl"))
    # An interrupted run: `cut_at` records written, then a torn line from a crash mid-write.
    out = tmp_path / "partial.jsonl"
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:cut_at]) + lines[cut_at][:15])
    resumed = records(run(text_file, out))
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in full)  # no duplicates, nothing lost
    assert {r["id"]: r["text"] for r in resumed} == {r["id"]: r["text"] for r in full}
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()  # records in input order either way


def test_continuous_batching_writes_what_one_row_at_a_time_writes(tmp_path, text_file):
    """Greedy runs refill finished rows (batch_size rows in one generate call): the file is the same, byte for
    byte, as regenerating one record at a time."""
    one = run(text_file, tmp_path / "one.jsonl", batch_size=1).read_bytes()
    for batch_size in (3, 4):
        assert run(text_file, tmp_path / f"b{batch_size}.jsonl", batch_size=batch_size).read_bytes() == one


def test_sampled_regeneration_and_chat_records(tmp_path):
    tok = byte_tokenizer()
    template = ("{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}<|eos|>{% endfor %}"
                "{% if add_generation_prompt %}<|bos|>assistant: {% endif %}")
    target_dir = tmp_path / "target"
    tiny_model("llama").save_pretrained(target_dir)
    tok.chat_template = template
    tok.save_pretrained(target_dir)
    chats = tmp_path / "chat.jsonl"
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]
    chats.write_text(json.dumps({"messages": conv}) + "\n")
    config = RegenerateConfig(target=str(target_dir), data=[str(chats)], output=str(tmp_path / "o.jsonl"),
                              max_new_tokens=6, sampling=SamplingConfig(0.8), seed=3)
    [record] = records(regenerate(config))
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user", "assistant"]
    assert record["messages"][0]["content"] == "hi" and record["messages"][2]["content"] == "bye"
    assert record["id"] == f"{chats}:0"
    # The regenerated file trains as is (the paper's "Regenerate"), also mixed with the original.
    assert main(["train", "--model", str(target_dir), "--data", str(chats), str(tmp_path / "o.jsonl"),
                 "--output", str(tmp_path / "d"), "-k", "3", "--max-steps", "1", "--batch-size", "1",
                 "--max-seq-len", "16", "--no-progress"]) == 0


def test_kd_loss_zero_for_equal_distributions_and_positive_otherwise():
    logits = torch.randn(2, 5, 7)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert kd_loss(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(2, 5, 7), mask).item() > 0
    # Masked-out positions do not count.
    other = logits.clone()
    other[:, 0] += torch.randn(2, 7)
    mask[:, 0] = False
    assert kd_loss(logits, other, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_distribution_is_its_output_at_the_real_position():
    """One teacher forward over x serves every subtask: position p (whatever its depth) reads the output at p."""
    x = np.arange(12) % 9
    sample = build_cod_sample(x, CODConfig(4, 1.0, 0.0), [9], np.random.default_rng(0))
    batch = CODCollator(with_source=True)([sample])
    assert batch["teacher_input_ids"].tolist() == [x.tolist()]
    teacher_logits = torch.arange(12).float()[None, :, None].expand(1, 12, 5)  # value = position
    trained = batch["labels"] != -100
    gathered = teacher_distributions(teacher_logits, batch["position_ids"], trained)  # (M, 5)
    assert gathered.shape == (int(trained.sum()), 5)
    assert (gathered[:, 0] == batch["position_ids"][trained].float()).all()


def test_teacher_is_cut_to_the_draft_vocabulary():
    teacher_logits = torch.arange(6).float().expand(2, 3, 6)  # (B, N, V_t): value = token id
    assert draft_columns(teacher_logits, 6, None) is teacher_logits
    assert draft_columns(teacher_logits, 4, None)[0, 0].tolist() == [0, 1, 2, 3]  # a smaller draft vocabulary
    assert draft_columns(teacher_logits, 7, None)[0, 0, 6] == float("-inf")  # a token the teacher cannot emit
    assert draft_columns(teacher_logits, 6, torch.tensor([1, 4]))[1, 2].tolist() == [1, 4]  # a reduced head


def test_distillation_gradient_flows_only_into_the_draft():
    draft = tiny_model("draft", seed=1)
    teacher = tiny_model("llama", seed=2).requires_grad_(False)
    x = np.random.default_rng(0).integers(0, 256, size=20)
    batch = CODCollator(with_source=True)([build_cod_sample(x, CODConfig(3, 0.7, 0.2), [258],
                                                           np.random.default_rng(0))])
    student = draft(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    attention_mask=batch["attention_mask"]).logits
    trained = batch["labels"] != -100
    with torch.no_grad():
        target = teacher_distributions(teacher(input_ids=batch["teacher_input_ids"]).logits,
                                       batch["position_ids"], trained)
    loss = kd_loss(student[trained], target)
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in draft.parameters())
    # Against itself (K = 1, real positions only) the term vanishes.
    same = copy.deepcopy(draft)
    columns = torch.arange(trained.shape[1]).expand_as(trained)
    real = (batch["position_ids"] == columns)[trained]  # depth-0 tokens sit at their own position
    with torch.no_grad():
        own = teacher_distributions(same(input_ids=batch["teacher_input_ids"]).logits, batch["position_ids"], trained)
    assert kd_loss(student.detach()[trained], own, real).item() == pytest.approx(0, abs=1e-5)


def test_train_with_distillation(tmp_path, text_file):
    assert main(["train", "--model", "tiny:draft", "--data", str(text_file), "--output", str(tmp_path / "kd"),
                 "-k", "4", "--max-steps", "3", "--batch-size", "2", "--max-seq-len", "32", "--no-progress",
                 "--distill-from", "tiny:llama", "--kd-weight", "0.5", "--kd-temperature", "2"]) == 0
    info = json.loads((tmp_path / "kd" / "pard_training.json").read_text())
    assert info["distill_from"] == "tiny:llama" and info["kd_weight"] == 0.5


def test_alignment_comparison_end_to_end(tmp_path):
    """raw / regenerated / regenerated + distillation drafts, each benchmarked on every target (tiny scale)."""
    from pard.bench.alignment import AlignmentConfig, run_alignment
    from pard.bench.runner import BenchConfig

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t * 3}) + "\n" for t in TEXTS))
    result = run_alignment(AlignmentConfig(
        teacher="tiny:llama", base="tiny:draft", targets=["tiny:llama", "tiny:qwen2"],
        corpus=str(corpus), output=str(tmp_path / "align"), windows=6, window_tokens=40, prefix_tokens=10, steps=2,
        batch_size=2, num_draft_tokens=3,
        bench=BenchConfig(datasets=["humaneval"], num_prompts=2, max_new_tokens=8, repeats=1, warmup=0),
    ))
    assert set(result["results"]) == {"raw corpus", "regenerated", "regenerated + distillation"}
    rows = [r for r in result["table"].splitlines() if r.startswith("| regenerated + distillation")]
    assert len(rows) == 2  # one per target
    regenerated = [json.loads(line) for line in (tmp_path / "align" / "regenerated.jsonl").read_text().splitlines()]
    assert len(regenerated) == 6 and all(r["regenerated_by"] == "tiny:llama" for r in regenerated)
    info = json.loads((tmp_path / "align" / "draft-distilled" / "pard_training.json").read_text())
    assert info["distill_from"] == "tiny:llama"
    raw = json.loads((tmp_path / "align" / "draft-raw" / "pard_training.json").read_text())
    assert raw["data"] == [str(corpus)] and raw["steps"] == info["steps"]  # only the data differs

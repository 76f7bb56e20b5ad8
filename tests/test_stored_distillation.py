"""Distillation from stored target distributions: `generate(top_logprobs=n)` -> `pard regenerate --top-logprobs N`
-> `pard train --distill-from data`."""

import json

import numpy as np
import pytest
import torch

from helpers import PROMPTS, as_pard_draft, noisy_copy
from pard import SpeculativeDecoder
from pard.cli import main
from pard.decoding import SamplingConfig
from pard.regenerate import RegenerateConfig, regenerate
from pard.training import CODConfig, build_cod_sample
from pard.training.collator import CODCollator
from pard.training.config import DataConfig
from pard.training.data import load_training_sequences
from pard.training.loss import kd_loss, stored_kd_loss, teacher_distributions
from pard.training.stored_teacher import align_rows, gather_rows, prompt_digest
from pard.training.trainer import CODDataset, stored_teacher_width

N_TOP = 5


def target_rows(target, prompt, generated):
    """The target's log-distribution of each generated token, from one teacher-forced forward: (T, V)."""
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = target(ids).logits[0, len(prompt) - 1 : len(prompt) + len(generated) - 1]
    return torch.log_softmax(logits.float(), dim=-1)


@pytest.mark.parametrize("engine", ["eager", "static"])
@pytest.mark.parametrize("method,k", [("ar", 1), ("vsd", 3), ("pard", 4)])
def test_top_logprobs_are_the_targets_distributions_and_change_nothing(target, method, k, engine):
    draft = {"ar": None, "vsd": noisy_copy(target, 0.05, 1), "pard": as_pard_draft(noisy_copy(target, 0.05, 1), 3)}
    decoder = SpeculativeDecoder(target, draft[method], method=method, num_draft_tokens=k, engine=engine)
    plain = decoder.generate(PROMPTS, max_new_tokens=20)
    out = decoder.generate(PROMPTS, max_new_tokens=20, top_logprobs=N_TOP)
    assert plain.top_logprobs is None
    assert out.sequences == plain.sequences  # read only
    for prompt, generated, (logprobs, ids) in zip(PROMPTS, out.sequences, out.top_logprobs):
        assert logprobs.shape == ids.shape == (len(generated), N_TOP)
        reference = target_rows(target, prompt, generated)  # (T, V)
        torch.testing.assert_close(logprobs, reference.topk(N_TOP).values, atol=1e-4, rtol=0)
        torch.testing.assert_close(reference.gather(1, ids), logprobs, atol=1e-4, rtol=0)  # ids hold those values
        assert ids[:, 0].tolist() == generated  # greedy: each token is its distribution's argmax


def test_sampled_top_logprobs_are_the_unfiltered_distribution(target):
    decoder = SpeculativeDecoder(target, as_pard_draft(noisy_copy(target, 0.1, 2), 3), method="pard",
                                 num_draft_tokens=3)
    out = decoder.generate(PROMPTS[:2], max_new_tokens=16, sampling=SamplingConfig(0.7, top_p=0.9), seed=4,
                           top_logprobs=3)
    for prompt, generated, (logprobs, _) in zip(PROMPTS, out.sequences, out.top_logprobs):
        torch.testing.assert_close(logprobs, target_rows(target, prompt, generated).topk(3).values, atol=1e-4, rtol=0)


def test_align_rows_only_where_the_training_text_is_what_the_target_saw_and_wrote():
    entry = {"prompt": prompt_digest([5, 6]), "tokens": [7, 8, 9], "ids": [[7, 1], [8, 2], [9, 3]],
             "logprobs": [[-0.1, -2.0], [-0.2, -3.0], [-0.3, -4.0]]}
    rows = align_rows([5, 6, 7, 8, 9, 4], [(2, entry)])
    assert rows["teacher_ids"] == [[], [], [7, 1], [8, 2], [9, 3], []]
    assert rows["teacher_logprobs"][3] == [-0.2, -3.0]
    # Re-tokenization merged 8 and 9 into 89: the rows of 8 and 9 were conditioned on another prefix.
    assert align_rows([5, 6, 7, 89, 4], [(2, entry)])["teacher_ids"] == [[], [], [7, 1], [], []]
    assert align_rows([5, 6, 7], [(2, entry)])["teacher_ids"] == [[], [], [7, 1]]  # cut by a chunk end
    # Another prompt before the same tokens (a later chat turn after a replaced one): nothing.
    assert align_rows([5, 0, 7, 8, 9], [(2, entry)])["teacher_ids"] == [[]] * 5


def test_each_packed_position_reads_the_row_of_its_label():
    x = np.arange(10, 22)  # 12 tokens
    sample = build_cod_sample(x, CODConfig(4, 1.0, 1.0), [99], np.random.default_rng(0))
    chunk = {"teacher_ids": [[int(t), 0] if t % 2 else [int(t)] for t in x],
             "teacher_logprobs": [[-1.0, -2.0] if t % 2 else [-0.5] for t in x]}
    ids, logprobs = gather_rows(chunk, sample.position_ids + 1, 2)  # (L, 2)
    trained = sample.labels != -100
    assert (ids[trained, 0] == sample.labels[trained]).all()  # row of the token each position predicts
    odd = sample.labels % 2 == 1
    assert (ids[trained & ~odd, 1] == -1).all() and np.isneginf(logprobs[trained & ~odd, 1]).all()  # short rows
    sample.teacher_ids, sample.teacher_logprobs = ids, logprobs
    short = build_cod_sample(x[:6], CODConfig(2), [99], np.random.default_rng(1))
    short.teacher_ids, short.teacher_logprobs = gather_rows(chunk, short.position_ids + 1, 2)
    batch = CODCollator()([sample, short])
    assert batch["teacher_ids"].shape == (*batch["labels"].shape, 2)
    assert (batch["teacher_ids"][1, len(short):] == -1).all()  # padding has no entries
    assert batch["teacher_logprobs"][0].tolist() == logprobs.tolist()


def test_stored_kd_loss_equals_kd_loss_with_every_token_stored_and_renormalises_a_top_n():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 9, requires_grad=True), torch.randn(6, 9)
    full = torch.log_softmax(teacher, -1).sort(dim=-1, descending=True)  # every token stored, in top order
    for t in (1.0, 2.0):
        assert stored_kd_loss(student, full.indices, full.values, t).item() == pytest.approx(
            kd_loss(student, teacher, temperature=t).item(), abs=1e-5)
    top_ids, top_logprobs = full.indices[:, :3].clone(), full.values[:, :3].clone()
    top_ids[0], top_ids[1, 2] = -1, -1  # row 0 has no entries; row 1 only two
    top_logprobs[0], top_logprobs[1, 2] = -torch.inf, -torch.inf
    loss = stored_kd_loss(student, top_ids, top_logprobs)
    masked = torch.full_like(teacher, -torch.inf)  # the teacher's logits at the stored tokens only
    for row, column in (top_ids >= 0).nonzero().tolist():
        token = top_ids[row, column]
        masked[row, token] = teacher[row, token]
    # The same as KL towards the teacher restricted to the stored tokens, over the rows that have some.
    reference = kd_loss(student[1:], masked[1:])
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all() and (student.grad[0] == 0).all()


def write_chats(path, n=6, turns=1):
    def chat(i):
        return [m for t in range(turns) for m in ({"role": "user", "content": f"def f{i}_{t}(x): return x + {i}"},
                                                   {"role": "assistant", "content": "-"})]

    path.write_text("".join(json.dumps({"id": f"c{i}", "messages": chat(i)}) + "\n" for i in range(n)))
    return path


@pytest.fixture(scope="module")
def chat_target(tmp_path_factory):
    """The embedded family's small model (its answers are text that re-tokenizes as written, unlike a random tiny
    model's bytes) with a chat template whose turns are set apart by special tokens."""
    from pard.models import load_model, load_tokenizer

    path = tmp_path_factory.mktemp("chat-target")
    tok = load_tokenizer("zoo:small")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}{{ eos_token }}{{ m['content'] }}{{ eos_token }}"
                         "{% endfor %}{% if add_generation_prompt %}assistant{{ eos_token }}{% endif %}")
    load_model("zoo:small").save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_regenerate_stores_the_distributions_of_what_it_wrote(tmp_path, chat_target):
    from pard.models import load_tokenizer

    out = tmp_path / "answers.jsonl"
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(write_chats(tmp_path / "c.jsonl"))],
                                output=str(out), max_new_tokens=10, batch_size=4, top_logprobs=4))
    tok = load_tokenizer(str(chat_target))
    for line in out.read_text().splitlines():
        record = json.loads(line)
        [entry] = record["top_logprobs"]
        assert entry["message"] == 1 and len(entry["ids"]) == len(entry["logprobs"]) == len(entry["tokens"])
        assert all(len(row) == 4 and row == sorted(row, reverse=True) for row in entry["logprobs"])
        assert [row[0] for row in entry["ids"]] == entry["tokens"]  # greedy
        answer = [t for t in entry["tokens"] if t != tok.eos_token_id]
        assert record["messages"][1]["content"] == tok.decode(answer, skip_special_tokens=True)


def test_resuming_with_another_top_logprobs_setting_is_refused_and_changes_nothing(tmp_path, chat_target):
    data, out = write_chats(tmp_path / "c.jsonl"), tmp_path / "answers.jsonl"
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(data)], output=str(out), max_new_tokens=6,
                                limit=2))
    before = out.read_bytes()
    code = main(["regenerate", "--target", str(chat_target), "--data", str(data), "--output", str(out),
                 "--max-new-tokens", "6", "--top-logprobs", "3"])
    assert code != 0 and out.read_bytes() == before


def test_stored_rows_reach_each_trained_position_as_a_target_forward_would(tmp_path, chat_target):
    """Every token's distribution stored: after tokenizing, COD packing and batching, each trained position holds
    exactly the distribution a target forward over the training sequence gives there (what --distill-from TARGET
    reads), at every position the regenerated answer covers."""
    from pard.models import load_model, load_tokenizer

    target = load_model(str(chat_target))
    answers = tmp_path / "answers.jsonl"
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(write_chats(tmp_path / "c.jsonl"))],
                                output=str(answers), max_new_tokens=12, batch_size=3,
                                top_logprobs=target.config.vocab_size))
    config = DataConfig(max_seq_len=64, assistant_only=True, packing=False)  # one record per row, as generated
    chunks = load_training_sequences([str(answers)], load_tokenizer(str(chat_target)), config, 3,
                                     stored_teacher=True)
    dataset = CODDataset(chunks, CODConfig(3), [3], seed=0, teacher_width=stored_teacher_width(chunks))
    batch = CODCollator(with_source=True)([dataset[i] for i in range(len(dataset))])
    trained = batch["labels"] != -100
    covered = trained & (batch["teacher_ids"] >= 0).any(-1)  # (B, L)
    assert covered.sum() >= 0.8 * trained.sum()  # all but an end-of-turn token the answer did not reach
    with torch.no_grad():
        logits = target(batch["teacher_input_ids"]).logits
    expected = torch.log_softmax(teacher_distributions(logits, batch["position_ids"], covered), -1)  # (M, V)
    stored = torch.full_like(expected, -torch.inf).scatter(1, batch["teacher_ids"][covered],
                                                           batch["teacher_logprobs"][covered])
    torch.testing.assert_close(stored, expected, atol=2e-4, rtol=0)


def test_train_with_distill_from_data(tmp_path, chat_target, capsys):
    original = write_chats(tmp_path / "c.jsonl")
    answers = tmp_path / "answers.jsonl"
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(original)], output=str(answers),
                                max_new_tokens=12, batch_size=3, top_logprobs=8))
    out = tmp_path / "draft"
    capsys.readouterr()
    # Regenerated answers mixed with the original chats, whose tokens have no stored rows (the paper's
    # Regenerate + Original): the term covers the regenerated half.
    assert main(["train", "--model", str(chat_target), "--data", str(answers), str(original), "--output", str(out),
                 "-k", "3", "--max-steps", "2", "--batch-size", "2", "--max-seq-len", "64", "--assistant-only",
                 "--no-progress", "--distill-from", "data", "--draft-vocab", "300"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if "stored top-8" in x]
    covered, total = (int(n.replace(",", "")) for n in line.split(" at ")[1].split(" trained")[0].split(" of "))
    assert 0 < covered < total
    info = json.loads((out / "pard_training.json").read_text())
    assert info["distill_from"] == "data" and info["kd_weight"] == 1.0 and np.isfinite(info["train_loss"])


def test_distill_from_data_needs_stored_distributions(tmp_path, chat_target, capsys):
    data = write_chats(tmp_path / "c.jsonl")
    code = main(["train", "--model", str(chat_target), "--data", str(data), "--output", str(tmp_path / "d"), "-k", "3",
                 "--max-steps", "1", "--no-progress", "--distill-from", "data"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "--top-logprobs" in err[0]


def test_a_later_turn_written_after_a_replaced_one_gets_no_rows(tmp_path, chat_target):
    """Each turn is written after the original history; the training text holds the regenerated earlier turns, so
    only the first turn's rows are the distributions its positions need."""
    from pard.models import load_tokenizer

    answers = tmp_path / "answers.jsonl"
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(write_chats(tmp_path / "c.jsonl", 3, turns=2))],
                                output=str(answers), max_new_tokens=8, top_logprobs=2))
    tok = load_tokenizer(str(chat_target))
    config = DataConfig(max_seq_len=512, assistant_only=True, packing=False)
    for record, chunk in zip(map(json.loads, answers.open()),
                             load_training_sequences([str(answers)], tok, config, 3, stored_teacher=True)):
        first, second = record["top_logprobs"]
        assert (first["message"], second["message"]) == (1, 3)
        rows = [t for t, row in enumerate(chunk["teacher_ids"]) if row]
        assert len(rows) > 0 and rows == list(range(rows[0], rows[0] + len(rows)))  # one span: the first turn
        assert len(rows) <= len(first["tokens"])


# --- teacher forcing: the target reads answers it did not write --------------------------------------------------


def test_teacher_forcing_stores_what_generating_the_same_answers_stored(tmp_path, chat_target):
    """Read back over its own greedy answers, the target stores what it stored while writing them: the same top-n
    at every answer token and the same states; the text stays byte for byte, and training finds a row at every
    answer token. (A later turn was written after the *original* history; read back, it is read after the written
    one, as training will read it: the second turns' rows differ, and cover the whole answer.)"""
    from pard.feature_store import FeatureStore
    from pard.models import load_tokenizer

    written, read = tmp_path / "written.jsonl", tmp_path / "read.jsonl"
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(write_chats(tmp_path / "c.jsonl", 5, turns=2))],
                                output=str(written), max_new_tokens=10, batch_size=3, top_logprobs=4,
                                store_features=[-1, 1]))
    assert main(["regenerate", "--target", str(chat_target), "--data", str(written), "--output", str(read),
                 "--teacher-force", "--batch-size", "2", "--top-logprobs", "4", "--store-features", "-1", "1"]) == 0
    before, after = FeatureStore(written), FeatureStore(read)
    for w, r in zip(map(json.loads, written.open()), map(json.loads, read.open())):
        assert r["messages"] == w["messages"] and r["teacher_forced"] is True and "teacher_forced" not in w
        for field in ("top_logprobs", "target_features"):
            for gen, forced in zip(w[field][:1], r[field][:1]):
                assert (gen["message"], gen["prompt"]) == (forced["message"], forced["prompt"])
                n = len(gen["tokens"])  # an answer cut at max_new_tokens gains its end of turn when read back
                assert forced["tokens"][:n] == gen["tokens"] and len(forced["tokens"]) - n in (0, 1)
                if field == "top_logprobs":
                    assert [row[0] for row in forced["ids"][:n]] == gen["tokens"]  # greedy: its top-1
                    np.testing.assert_allclose(forced["logprobs"][:n], gen["logprobs"], atol=2e-4)
                else:
                    rows = np.arange(gen["rows"])
                    torch.testing.assert_close(after.rows(forced["row"] + rows), before.rows(gen["row"] + rows),
                                               atol=0.05, rtol=0.02)  # bf16, from another pass
    states_only = tmp_path / "states.jsonl"  # no top-n: the pass computes no logits but the last position's
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(written)], output=str(states_only),
                                teacher_force=True, store_features=[-1, 1]))
    torch.testing.assert_close(FeatureStore(states_only).rows(np.arange(len(after))), after.rows(np.arange(len(after))),
                               atol=0.05, rtol=0.02)
    tok = load_tokenizer(str(chat_target))
    config = DataConfig(max_seq_len=512, assistant_only=True, packing=False)
    for chunk in load_training_sequences([str(read)], tok, config, 3, stored_teacher=True,
                                         feature_offsets={str(read): 0}):
        trained = [t for t, keep in enumerate(chunk["trainable"]) if keep]
        assert all(chunk["teacher_ids"][t] for t in trained)  # every answer token, both turns
        assert all(chunk["target_feature"][t] >= 0 for t in trained)


def test_teacher_forcing_plain_text_reads_every_token_after_the_prefix(tmp_path, chat_target):
    from pard.models import load_model, load_tokenizer

    texts = ["def add(a, b):\n    return a + b\n", "x = [i * i for i in range(9)]\n"]
    data, out = tmp_path / "t.jsonl", tmp_path / "read.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    regenerate(RegenerateConfig(target=str(chat_target), data=[str(data)], output=str(out), prefix_tokens=1,
                                teacher_force=True, top_logprobs=3))
    tok, target = load_tokenizer(str(chat_target)), load_model(str(chat_target))
    for text, record in zip(texts, map(json.loads, out.open())):
        ids = tok(text)["input_ids"] + [tok.eos_token_id]
        [entry] = record["top_logprobs"]
        assert record["text"] == text and entry["offset"] == 1 and entry["tokens"] == ids[1:]
        expected = target_rows(target, ids[:1], ids[1:]).topk(3, dim=-1)
        assert entry["ids"] == expected.indices.tolist()
        np.testing.assert_allclose(entry["logprobs"], expected.values.numpy(), atol=2e-4)


def test_teacher_forcing_refuses_what_it_cannot_do_and_a_run_of_the_other_kind(tmp_path, chat_target, capsys):
    chats = write_chats(tmp_path / "c.jsonl", 3)
    out = tmp_path / "read.jsonl"
    base = ["regenerate", "--target", str(chat_target), "--output", str(out), "--teacher-force"]
    for extra in (["--data", str(chats)],  # stores nothing
                  ["--data", str(chats), "--top-logprobs", "2", "--temperature", "0.7"],  # writes no tokens
                  ["--data", str(tmp_path / "e.jsonl"), "--top-logprobs", "2"]):  # an empty answer
        (tmp_path / "e.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                   {"role": "assistant", "content": ""}]}) + "\n")
        capsys.readouterr()
        assert main([*base, *extra]) == 2 and not out.exists()
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main([*base, "--data", str(chats), "--top-logprobs", "2", "--limit", "1"]) == 0
    kept = out.read_bytes()
    capsys.readouterr()
    assert main([*base[:-1], "--data", str(chats), "--top-logprobs", "2", "--max-new-tokens", "4"]) == 2  # generate
    assert "--teacher-force" in capsys.readouterr().err and out.read_bytes() == kept
    assert main([*base, "--data", str(chats), "--top-logprobs", "2"]) == 0  # resumed
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["c0", "c1", "c2"]


def test_a_template_that_rewrites_earlier_turns_is_refused_by_training_and_teacher_forcing(tmp_path, chat_target,
                                                                                            capsys):
    """A template that renders an earlier assistant turn otherwise than when it was the last (as reasoning models'
    templates drop earlier thinking) cannot say where a turn's tokens are: both readers of assistant turns refuse in
    one line, and teacher forcing writes nothing."""
    import shutil

    from pard.errors import DataError
    from pard.models import load_tokenizer
    from pard.prompts import render_chat
    from pard.training.data import assistant_spans, tokenize_records

    target = tmp_path / "target"
    shutil.copytree(chat_target, target)
    tok = load_tokenizer(str(target))
    consistent = tok.chat_template
    rewritten = "{{ '...' if m['role'] == 'assistant' and not loop.last else m['content'] }}"
    tok.chat_template = consistent.replace("{{ m['content'] }}", rewritten)
    tok.save_pretrained(target)
    chats = write_chats(tmp_path / "c.jsonl", 2, turns=2)
    messages = json.loads(chats.read_text().splitlines()[0])["messages"]
    assert assistant_spans(tok, messages, render_chat(tok, messages)) is None
    tok.chat_template = consistent
    ids = render_chat(tok, messages)
    spans = assistant_spans(tok, messages, ids)
    assert list(spans) == [1, 3] and [tok.decode(ids[a:b]) for a, b in spans.values()] == [f"-{tok.eos_token}"] * 2

    import datasets

    records = datasets.load_dataset("json", data_files=str(chats), split="train")
    with pytest.raises(DataError, match="prefix-consistently.*drop --assistant-only"):
        tokenize_records(records, load_tokenizer(str(target)), DataConfig(assistant_only=True), str(chats))
    out = tmp_path / "read.jsonl"
    capsys.readouterr()
    assert main(["regenerate", "--target", str(target), "--data", str(chats), "--output", str(out),
                 "--teacher-force", "--top-logprobs", "2"]) == 2 and not out.exists()
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "prefix-consistently" in line and "--teacher-force" in line


def test_stdlib_chat_answers_are_the_write_it_requests_answered_with_their_own_source():
    import ast

    from pard.corpus import documented_functions, stdlib_chat_answers, stdlib_chat_prompts

    functions, answers = documented_functions("heldout"), stdlib_chat_answers("heldout", 10**6)
    assert len(answers) == len(functions) > 50 and len({a["id"] for a in answers}) == len(answers)
    for function, answer in zip(functions, answers):
        request, reply = answer["messages"]
        assert request["content"].startswith(f"Write a Python function `{function['name']}(")
        assert reply["content"] == f"```python\n{function['source']}\n```"
        ast.parse(function["source"])  # a whole function, decorators included
    asked = {p["id"]: p["messages"][0]["content"] for p in stdlib_chat_prompts("heldout", 10**6)}
    write_it = [a for a in answers if asked[a["id"].removesuffix(":source")].startswith("Write a Python function")]
    assert write_it and all(asked[a["id"].removesuffix(":source")] == a["messages"][0]["content"] for a in write_it)

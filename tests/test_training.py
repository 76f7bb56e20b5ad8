"""`pard train`: learning, the saved draft, resume, crash-safe checkpoints, mask tokens, bad data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers import hf_greedy
from pard import SpeculativeDecoder, load_pair
from pard.cli import main
from pard.draft_vocab import attach_subset_head
from pard.errors import DataError, InvalidArgumentError
from pard.mask_tokens import choose_mask_token
from pard.tiny import byte_tokenizer, tiny_model
from pard.training import CODConfig, DataConfig, TrainConfig, build_cod_sample, train
from pard.training.collator import CODCollator
from pard.training.data import load_training_sequences, tokenize_records
from pard.training.loss import pard_loss
from pard.training.rundir import last_complete_checkpoint
from pard.training.sampler import LengthGroupedSampler
from pard.training.trainer import CODDataset, scores_only

CODE = [
    "def add(a, b):\n    return a + b\n",
    "def mul(a, b):\n    return a * b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
] * 8


@pytest.fixture
def code_file(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE))
    return path


def config(tmp_path, data, **overrides):
    base = dict(
        model="tiny:draft", data=[str(data)], output=str(tmp_path / "out"), cod=CODConfig(4, 0.7, 0.2),
        data_config=DataConfig(max_seq_len=64), max_steps=6, learning_rate=3e-3, batch_size=2, save_steps=3,
        logging_steps=1, disable_progress=True, warmup_ratio=0.0,
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_loss_decreases_weights_change_and_draft_serves(tmp_path, code_file):
    out = train(config(tmp_path, code_file, max_steps=40))
    info = json.loads((out / "pard_training.json").read_text())
    state = json.loads((sorted(out.glob("checkpoint-*"))[-1] / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert info["steps"] == 40 and info["num_draft_tokens"] == 4 and info["retention"] == 0.7
    trained = load_file(out / "model.safetensors")
    initial = tiny_model("draft").state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(trained[name], initial[name])
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["pard_token"] == byte_tokenizer().mask_token_id and config_json["spd_type"] == "pard"
    assert config_json["use_cache"] is True  # a trained draft is saved ready to decode with a KV cache
    pair = load_pair("tiny:llama", str(out), device="cpu")
    assert pair.method == "pard"
    prompt = pair.tokenizer("def add(a, b):")["input_ids"]
    decoded = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=4,
                                 target_tokenizer=pair.tokenizer, draft_tokenizer=pair.draft_tokenizer)
    assert decoded.generate([prompt], max_new_tokens=12).sequences[0] == hf_greedy(pair.target, prompt, 12)


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt


@pytest.mark.parametrize("reduced_head", [False, True])
def test_head_scoring_only_trained_positions_changes_neither_loss_nor_gradients(reduced_head):
    """The trainer's fast path (the LM head scores the trained positions alone: no padding, no prompt tokens)
    against the plain one (score every position, ignore the untrained ones in the loss)."""
    model = tiny_model("draft", seed=0).train()
    if reduced_head:
        attach_subset_head(model, list(range(0, 259, 3)))
    head = model.get_output_embeddings()
    rng = np.random.default_rng(0)
    samples = [build_cod_sample(rng.integers(0, 256, n), CODConfig(3, 0.7, 0.2), [258], rng,
                                trainable=np.arange(n) >= 5) for n in (24, 15)]  # a prompt, and padding in row 2
    batch = CODCollator()(samples)
    labels = batch.pop("labels")
    if reduced_head:
        labels = head.to_subset(labels, -100)
    trained = labels != -100  # (B, L)

    def loss_and_grads(fast: bool):
        model.zero_grad()
        if fast:
            with scores_only(head, trained):
                logits = model(**batch).logits
            assert logits.shape[0] == int(trained.sum())
            loss = pard_loss(logits, labels[trained])
        else:
            loss = pard_loss(model(**batch).logits, labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (plain, plain_grads), (fast, fast_grads) = loss_and_grads(False), loss_and_grads(True)
    assert 0 < int(trained.sum()) < trained.numel()
    torch.testing.assert_close(fast, plain)
    assert len(fast_grads) == len(plain_grads) > 0
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not head._forward_pre_hooks  # the head scores everything again afterwards


def test_length_grouped_batches_literal():
    lengths = [10, 50, 11, 52, 30, 31, 12, 51, 29, 90]  # (S,) = 10 samples, batches of 3: three full, one short
    sampler = LengthGroupedSampler(lengths, batch_size=3, seed=0, epoch_of=lambda: 0, window=4)
    order = sampler.batches(0)
    assert sorted(order.tolist()) == list(range(10))  # every sample once
    assert list(sampler) == order.tolist() and len(sampler) == 10
    assert (order == sampler.batches(0)).all()  # (seed, epoch) decide the order, nothing else
    assert any((order != sampler.batches(epoch)).any() for epoch in range(1, 6))
    batches = [sorted(lengths[i] for i in order[j:j + 3]) for j in range(0, 10, 3)]
    # A window of 4 batches holds this whole epoch: sorted by length, then cut. The longest batch comes first, the
    # short one last (the loader cuts the stream into batches of 3: these batches).
    assert batches[0] == [51, 52, 90] and batches[-1] == [10]
    assert sorted(batches[1:3]) == [[11, 12, 29], [30, 31, 50]]


def test_expected_packed_lengths_order_samples_like_their_packed_lengths():
    cod = CODConfig(4, 0.7, 0.2)
    chunks = [{"input_ids": list(range(40)), "trainable": [i >= 30 for i in range(40)]},  # a long prompt
              {"input_ids": list(range(40)), "trainable": [True] * 40},
              {"input_ids": list(range(20)), "trainable": [True] * 20}]
    expected = CODDataset(chunks, cod, [256], seed=0).lengths()
    packed = [np.mean([len(CODDataset(chunks, cod, [256], seed=s)[i]) for s in range(200)]) for i in range(3)]
    assert expected == pytest.approx(packed, rel=0.03)
    assert expected[2] < expected[0] < expected[1]  # a prompt gets no mask subtasks: shorter than its length says


def test_resume_neither_loses_nor_repeats_steps(tmp_path, code_file):
    straight = train(config(tmp_path / "a", code_file))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b", code_file), callbacks=[Interrupt()])
    assert last_complete_checkpoint(tmp_path / "b" / "out").endswith("checkpoint-3")
    resumed = train(config(tmp_path / "b", code_file, resume=True))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert json.loads((resumed / "pard_training.json").read_text())["steps"] == 6


def test_half_written_checkpoint_is_skipped(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()  # crashed mid-save: no trainer state yet
    (tmp_path / "checkpoint-9" / "model.safetensors").write_bytes(b"partial")
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-6")
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text('{"trunc')  # torn write
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-6")


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, code_file):
    train(config(tmp_path, code_file, max_steps=3))
    with pytest.raises(InvalidArgumentError, match="--resume"):
        train(config(tmp_path, code_file, max_steps=3))


def test_mask_token_choices():
    tok = byte_tokenizer()
    assert choose_mask_token(tiny_model("draft"), tok, [7], False) == [7]
    with pytest.raises(InvalidArgumentError, match="outside"):
        choose_mask_token(tiny_model("draft"), tok, [10_000], False)
    assert choose_mask_token(tiny_model("draft"), tok, None, False) == [tok.mask_token_id]  # its own mask token
    # Unused embedding rows past the tokenizer (how the official Qwen2.5 drafts pick 151665).
    assert choose_mask_token(tiny_model("draft", vocab_size=300), tok, None, False) == [len(tok)]
    model = tiny_model("draft")
    added = choose_mask_token(model, tok, None, True)
    assert added == [len(tok) - 1] and model.get_input_embeddings().num_embeddings == len(tok)


def test_chat_records_assistant_only(tmp_path):
    tok = byte_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}<|eos|>{% endfor %}"
        "{% if add_generation_prompt %}<|bos|>assistant: {% endif %}"
    )
    path = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
                {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]
    path.write_text(json.dumps({"messages": messages}) + "\n")
    import datasets

    records = datasets.load_dataset("json", data_files=str(path), split="train")
    row = tokenize_records(records, tok, DataConfig(assistant_only=True), str(path))[0]
    trained = tok.decode([t for t, ok in zip(row["input_ids"], row["trainable"]) if ok])
    assert trained == "hello!<|eos|>ok<|eos|>"
    row = tokenize_records(records, tok, DataConfig(), str(path))[0]
    assert all(row["trainable"])


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "is empty"),
        ('{"text": "ok"}\n{"text": broken}\n', "bad.jsonl:2: malformed JSON"),
        ('{"body": "no text field"}\n', "neither a 'text' nor a 'messages' field"),
        ('{"text": "ab"}\n', "fewer than K \\+ 1"),
        ('[1, 2', "bad.jsonl:1: malformed JSON"),
    ],
)
def test_bad_data(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_training_sequences([str(path)], byte_tokenizer(), DataConfig(), num_draft_tokens=8)


def test_short_records_without_packing(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abc", "de", "fghij"]))
    with pytest.raises(DataError, match="every record has fewer than K \\+ 1 = 9 tokens"):
        load_training_sequences([str(path)], byte_tokenizer(), DataConfig(packing=False), num_draft_tokens=8)


def test_unknown_data_sources(tmp_path):
    with pytest.raises(DataError, match="could not load dataset"):
        load_training_sequences(["no-such-user/no-such-dataset"], byte_tokenizer(), DataConfig(), 4)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_training_sequences([str(tmp_path / "x.csv")], byte_tokenizer(), DataConfig(), 4)


def test_text_and_parquet_files(tmp_path):
    import datasets

    (tmp_path / "a.txt").write_text("def f():\n    return 1\n" * 5)
    datasets.Dataset.from_list([{"text": t} for t in CODE]).to_parquet(str(tmp_path / "b.parquet"))
    chunks = load_training_sequences([str(tmp_path / "a.txt"), str(tmp_path / "b.parquet")], byte_tokenizer(),
                                     DataConfig(max_seq_len=32), 4)
    assert len(chunks) > 5 and all(len(c) <= 32 for c in chunks["input_ids"])


def test_cli_train_bad_data_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{oops}\n')
    code = main(["train", "--model", "tiny:draft", "--data", str(path), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and f"{path}:3: malformed JSON line" in err and len(err.splitlines()) == 1


def test_cli_train(tmp_path, code_file):
    code = main(["train", "--model", "tiny:draft", "--data", str(code_file), "--output", str(tmp_path / "o"),
                 "-k", "3", "--r", "0.5", "--r-min", "0.1", "--max-steps", "2", "--batch-size", "2",
                 "--max-seq-len", "32", "--no-progress"])
    assert code == 0
    info = json.loads((Path(tmp_path / "o") / "pard_training.json").read_text())
    assert (info["num_draft_tokens"], info["retention"], info["min_retention"], info["steps"]) == (3, 0.5, 0.1, 2)


@pytest.mark.slow
def test_two_process_training_with_torchrun(tmp_path):
    """DDP on two CPU processes (gloo) through the usual launcher; the saved draft loads and generates."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pard",
           "train", "--model", "tiny:draft", "--data", "stdlib:heldout", "--output", str(out), "-k", "4",
           "--max-seq-len", "64", "--max-steps", "4", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    info = json.loads((out / "pard_training.json").read_text())
    assert info["steps"] == 4 and info["batch_size"] == 4  # 2 per process x 2 processes
    pair = load_pair("tiny:llama", str(out), device="cpu")
    prompt = pair.tokenizer("import os")["input_ids"]
    got = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=4).generate(
        [prompt], max_new_tokens=8)
    assert got.sequences[0] == hf_greedy(pair.target, prompt, 8)

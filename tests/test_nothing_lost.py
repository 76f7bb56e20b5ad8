"""Nothing lost, one clear line: every refusal leaves the user's files byte-for-byte as they were, resumed runs
continue exactly, and bad input gets one readable line and a non-zero exit code (CLI level, where users meet it)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from pard.cli import main
from pard.files import exclusive_lock
from pard.tiny import byte_tokenizer, tiny_model

CODE = ["def add(a, b):\n    return a + b\n", "class P:\n    x = 1\n", "for i in range(3):\n    print(i)\n"] * 6


def snapshot(root: Path) -> dict:
    """Every file under root (or root itself) with its bytes: what 'left as it was' is checked against."""
    root = Path(root)
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data" / "x.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE))
    return path


def regen(*extra) -> list[str]:
    return ["regenerate", "--target", "tiny:llama", "--max-new-tokens", "4", "--prefix-tokens", "4", *extra]


# --- data loss -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"my notes\nline two\nno newline at the end", b'{"id": 1}\n{"id": 2}\n', b"x"])
def test_regenerate_refuses_an_output_it_did_not_write(tmp_path, data, capsys, content):
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content)
    code = main(regen("--data", str(data), "--output", str(out)))
    one_line_error(capsys, code, "not written by pard regenerate")
    assert out.read_bytes() == content


def test_regenerate_refuses_output_equal_to_input(data, capsys):
    before = snapshot(data)
    code = main(regen("--data", str(data), "--output", str(data.parent / ".." / "data" / "x.jsonl")))
    one_line_error(capsys, code, "is also an input")
    assert snapshot(data) == before


def test_regenerate_refuses_a_second_writer(tmp_path, data, capsys):
    out = tmp_path / "out.jsonl"
    with exclusive_lock(out, "the regenerated dataset"):  # another run holds the output
        code = main(regen("--data", str(data), "--output", str(out)))
    one_line_error(capsys, code, "another process is writing")
    assert not out.exists()


def test_regenerate_ids_do_not_depend_on_how_the_path_is_typed(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.jsonl"
    assert main(regen("--data", "data/x.jsonl", "--output", str(out), "--limit", "5")) == 0
    assert main(regen("--data", "./data/x.jsonl", "--output", str(out))) == 0  # resume, typed differently
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(CODE) == len(set(ids))


def test_regenerate_refuses_duplicate_ids(tmp_path, capsys):
    src = tmp_path / "dup.jsonl"
    src.write_text('{"id": "a", "text": "def f(): pass"}\n{"id": "a", "text": "def g(): pass"}\n')
    out = tmp_path / "out.jsonl"
    code = main(regen("--data", str(src), "--output", str(out)))
    one_line_error(capsys, code, "duplicate id 'a'")
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--batch-size", "0"], ["--temperature", "nan"], ["-k", "0"]])
def test_regenerate_bad_settings_leave_no_output(tmp_path, data, capsys, bad):
    out = tmp_path / "out.jsonl"
    one_line_error(capsys, main(regen("--data", str(data), "--output", str(out), *bad)))
    assert not out.exists()


def test_export_refuses_a_non_empty_directory_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "README.md").write_text("my own notes")
    before = snapshot(out)
    one_line_error(capsys, main(["export", "tiny:pard", "--output", str(out)]), "--overwrite")
    assert snapshot(out) == before
    assert main(["export", "tiny:pard", "--output", str(out), "--overwrite"]) == 0
    assert "PARD draft" in (out / "README.md").read_text() and (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_export_and_train_keep_the_umask(tmp_path, data):
    old = os.umask(0o022)
    try:
        assert main(["export", "tiny:pard", "--output", str(tmp_path / "e")]) == 0
        assert main(["train", "--model", "tiny:draft", "--data", str(data), "--output", str(tmp_path / "t"),
                     "-k", "2", "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "32", "--no-progress"]) == 0
    finally:
        os.umask(old)
    for directory in (tmp_path / "e", tmp_path / "t"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir() if p.is_file()}
        assert modes and set(modes.values()) == {0o644}, modes


def test_train_refuses_a_directory_of_other_files(tmp_path, data, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    before = snapshot(out)
    monkeypatch.setattr("pard.training.trainer.load_model", lambda *a, **k: pytest.fail("loaded a model first"))
    code = main(["train", "--model", "tiny:draft", "--data", str(data), "--output", str(out)])
    one_line_error(capsys, code, "not a pard training run")
    assert snapshot(out) == before


def test_train_checks_the_output_is_writable_before_training(tmp_path, data, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setattr("pard.training.trainer.load_model", lambda *a, **k: pytest.fail("loaded a model first"))
    code = main(["train", "--model", "tiny:draft", "--data", str(data), "--output", str(blocker / "run")])
    assert code != 0 and "Traceback" not in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_failed_bench_leaves_the_previous_results(tmp_path, capsys):
    out = tmp_path / "bench"
    base = ["bench", "--targets", "tiny:llama", "--draft", "tiny:pard", "--methods", "ar", "pard", "--datasets",
            "humaneval", "--num-prompts", "1", "--max-new-tokens", "4", "--repeats", "1", "--output", str(out)]
    assert main(base) == 0
    before = snapshot(out)
    capsys.readouterr()
    one_line_error(capsys, main([*base, "--datasets", "nope"]))
    one_line_error(capsys, main([*base, "--temperature", "nan"]))
    one_line_error(capsys, main([*base, "--targets", str(tmp_path / "missing")]), "no such file or directory")
    assert snapshot(out) == before


# --- resume must be exact --------------------------------------------------------------------------------------

class StepLosses(TrainerCallback):
    def __init__(self, stop_at: int | None = None):
        self.losses, self.stop_at = {}, stop_at

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at:
            raise KeyboardInterrupt  # a kill right after a checkpoint was written


def train_config(data, output, **overrides):
    from pard.training import CODConfig, DataConfig, TrainConfig

    base = dict(model="tiny:draft", data=[str(data)], output=str(output), cod=CODConfig(4, 0.6, 0.2),
                data_config=DataConfig(max_seq_len=24), epochs=3, learning_rate=3e-3, batch_size=2, save_steps=1,
                save_total_limit=2, logging_steps=1, disable_progress=True, warmup_ratio=0.0, seed=5)
    base.update(overrides)
    return TrainConfig(**base)


# Killed inside the second epoch, whose COD patterns (and length-grouped batches) differ from the first's.
@pytest.mark.parametrize(("into_epoch", "grouped"), [(2, True), (4, True), (4, False)])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, data, into_epoch, grouped):
    from pard.training import train

    straight = StepLosses()
    train(train_config(data, tmp_path / "a", group_by_length=grouped), callbacks=[straight])
    steps_per_epoch = max(straight.losses) // 3
    kill_at = steps_per_epoch + into_epoch
    assert kill_at < 2 * steps_per_epoch
    with pytest.raises(KeyboardInterrupt):
        train(train_config(data, tmp_path / "b", group_by_length=grouped), callbacks=[StepLosses(stop_at=kill_at)])
    resumed = StepLosses()
    train(train_config(data, tmp_path / "b", group_by_length=grouped, resume=True), callbacks=[resumed])
    resumed_from = min(resumed.losses) - 1  # the last checkpoint the killed run completed
    assert kill_at - 1 <= resumed_from <= kill_at and max(resumed.losses) == max(straight.losses)
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(straight.losses[step], rel=1e-5, abs=1e-6), step
    a = json.loads((tmp_path / "a" / "pard_training.json").read_text())
    b = json.loads((tmp_path / "b" / "pard_training.json").read_text())
    assert b["packed_tokens"] == a["packed_tokens"] and b["steps"] == a["steps"]
    assert b["train_seconds"] > 0 and [s["to_step"] for s in b["segments"]] == [resumed_from, a["steps"]]


def test_resume_with_other_cod_or_batching_settings_is_refused(tmp_path, data, capsys):
    from pard.training import train

    with pytest.raises(KeyboardInterrupt):
        train(train_config(data, tmp_path / "run", epochs=1), callbacks=[StepLosses(stop_at=2)])
    capsys.readouterr()  # the interrupted run's own progress output is not the refusal's
    before = snapshot(tmp_path / "run")
    args = ["train", "--model", "tiny:draft", "--data", str(data), "--output", str(tmp_path / "run"), "--resume",
            "--max-seq-len", "24"]
    one_line_error(capsys, main([*args, "-k", "8", "--r", "0.6"]), "num_draft_tokens 4 -> 8")
    one_line_error(capsys, main([*args, "-k", "4", "--r", "0.9"]), "retention 0.6 -> 0.9")
    one_line_error(capsys, main([*args, "-k", "4", "--r", "0.6", "--no-group-by-length"]),
                   "group_by_length True -> False")  # the rest of the run would see another data order
    assert snapshot(tmp_path / "run") == before


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, data, capsys):
    code = main(["train", "--model", "tiny:draft", "--data", str(data), "--output", str(tmp_path / "new"),
                 "--resume", "-k", "2", "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "32",
                 "--no-progress"])
    assert code == 0 and "no complete checkpoint" in capsys.readouterr().err


# --- one clear line --------------------------------------------------------------------------------------------

@pytest.fixture
def model_dirs(tmp_path):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "weights.bin").write_bytes(b"\0")
    no_tokenizer = tmp_path / "no-tokenizer"
    tiny_model("llama").save_pretrained(no_tokenizer)
    return {"missing": str(tmp_path / "nope" / "model"), "no-config": str(no_config),
            "no-tokenizer": str(no_tokenizer)}


@pytest.mark.parametrize("which, message", [("missing", "no such file or directory"),
                                            ("no-config", "no config.json"), ("no-tokenizer", "has no tokenizer")])
def test_models_that_are_not_there(model_dirs, capsys, which, message):
    one_line_error(capsys, main(["generate", "--target", model_dirs[which], "hi"]), message)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--target", "tiny:llama", "caf\udce9"], "not valid UTF-8"),
    (["generate", "--target", "tiny:llama", "--temperature", "nan", "hi"], "temperature"),
    (["generate", "--target", "tiny:llama", "--device", "tpu", "hi"], "unknown device 'tpu'"),
    (["export", "tiny:pard", "--output", "OUT", "-k", "0"], "K must be >= 1"),
    (["bench-train", "--model", "tiny:draft", "--data", "DATA", "--steps", "2"], "warm-up"),
])
def test_bad_arguments_are_one_line(tmp_path, data, capsys, argv, message):
    argv = [str(tmp_path / "o") if a == "OUT" else str(data) if a == "DATA" else a for a in argv]
    one_line_error(capsys, main(argv), message)


@pytest.mark.parametrize("bad, message", [
    (["--batch-size", "0"], "--batch-size"), (["--lr", "nan"], "--lr"), (["--max-seq-len", "4"], "below K + 1"),
    (["--r", "0.3", "--r-min", "0.5"], "must not exceed r"),
])
def test_train_settings_are_checked_before_anything_is_written(tmp_path, data, capsys, bad, message):
    out = tmp_path / "run"
    one_line_error(capsys, main(["train", "--model", "tiny:draft", "--data", str(data), "--output", str(out), *bad]),
                   message)
    assert not out.exists()


def test_training_data_that_is_not_utf8(tmp_path, capsys):
    for name, body in [("bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n'), ("bad.txt", b"fine\nbad \xff\n")]:
        path = tmp_path / name
        path.write_bytes(body)
        code = main(["train", "--model", "tiny:draft", "--data", str(path), "--output", str(tmp_path / "o")])
        one_line_error(capsys, code, f"{path}:2: not UTF-8")


def test_serve_dry_run_prints_paths_vllm_can_resolve(capsys):
    assert main(["serve", "--target", "zoo:large", "--draft", "zoo:pard", "--dry-run"]) == 0
    line = capsys.readouterr().out
    assert "zoo:" not in line
    from pard.zoo import zoo_path

    assert str(zoo_path("large")) in line and str(zoo_path("pard")) in line


def test_bench_accepts_a_pair_whose_output_layers_differ_but_tokenizers_agree(tmp_path, capsys):
    """Like Qwen2.5-7B (152,064 rows) with a 0.5B draft (151,936): one tokenizer, differently padded heads."""
    tok = byte_tokenizer()
    target, draft = tmp_path / "target", tmp_path / "draft"
    tiny_model("llama", vocab_size=300).save_pretrained(target)
    tiny_model("pard").save_pretrained(draft)  # 259 rows
    for path in (target, draft):
        tok.save_pretrained(path)
    code = main(["bench", "--targets", str(target), "--draft", str(draft), "--methods", "ar", "pard", "--datasets",
                 "humaneval", "--num-prompts", "1", "--max-new-tokens", "6", "--repeats", "1", "--output",
                 str(tmp_path / "b")])
    assert code == 0, capsys.readouterr().err


def test_ctrl_c_inside_a_finalizer_still_stops_the_command_in_one_line(monkeypatch, capsys):
    """Python swallows a KeyboardInterrupt raised in a ``__del__`` (it prints a traceback and runs on); this once
    happened to the start-up test below, a Ctrl-C landing in a garbage-collected ``regex`` object."""
    import argparse

    import pard.cli

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt  # where the Ctrl-C lands

    def command(args):
        Finalized()  # collected at once
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the rest of the command, which must not run to its end
            pass
        return 0

    def parser():
        p = argparse.ArgumentParser(prog="pard")
        p.add_argument("--debug", action="store_true")
        p.set_defaults(func=command)
        return p

    monkeypatch.setattr(pard.cli, "build_parser", parser)
    # A shell starts background jobs with SIGINT ignored, and the test runner then inherits that (the Ctrl-C cannot
    # arrive there); a command run from a terminal has Python's own handler, which the redelivery goes through.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    hook = sys.unraisablehook
    started = time.monotonic()
    try:
        code = main([])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    assert time.monotonic() - started < 10
    assert capsys.readouterr().err == "pard: interrupted\n"
    assert sys.unraisablehook is hook  # restored for the API user who called main()


def test_ctrl_c_during_start_up_is_one_line():
    pard = Path(sys.executable).with_name("pard")
    for delay in (0.3, 0.8):
        # SIG_DFL in the child: a runner started in the background ignores SIGINT, and an ignored signal stays
        # ignored across exec (Python then installs no handler), where a command typed in a terminal gets one.
        proc = subprocess.Popen([str(pard), "generate", "--target", "tiny:llama", "hello"], stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
        assert "Traceback" not in err, err
        assert proc.returncode in (130, -signal.SIGINT), (proc.returncode, err)


def test_tensors_still_exact_after_refusals():
    """Sanity: the refusals above did not change what decoding computes (the reference is plain greedy)."""
    from helpers import hf_greedy
    from pard import SpeculativeDecoder

    target = tiny_model("llama", seed=1)
    out = SpeculativeDecoder(target, tiny_model("pard"), method="pard", num_draft_tokens=3).generate(
        [[5, 6, 7]], max_new_tokens=10)
    assert out.sequences[0] == hf_greedy(target, [5, 6, 7], 10)
    assert torch.is_tensor(torch.tensor(out.sequences[0]))

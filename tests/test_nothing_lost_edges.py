"""Nothing lost, round two: the edges of the commands added since the first round (zoo builds, GGUF files, draft
making options, stored distributions, -k auto, serving). Each test fails without its fix: a command either does its
job or says in one line why not, and leaves the user's files -- and the models shipped in the package -- as they
were."""

import json
import os
import re
import warnings
from pathlib import Path

import pytest
from test_nothing_lost import CODE, one_line_error, snapshot

from helpers import write_tiny_gguf
from pard.cli import main
from pard.zoo import ZOO_DIR, zoo_path


def error_line(capsys, code: int, *fragments: str, exit_code: int = 2) -> str:
    """stderr is one line (no traceback), the exit code is ``exit_code``, and the line names every fragment. Progress
    bars of work done before the error (a GGUF file's de-quantization) may precede it, finished."""
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not re.search(r"\d+%\|.*\|", line))
    assert code == exit_code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no file can be created in (root ignores modes: then /sys, where even root cannot)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and _can_create_in("/sys"):
        pytest.skip("no read-only directory available to root here")
    yield Path("/sys")


def _can_create_in(folder) -> bool:
    try:
        os.mkdir(os.path.join(folder, ".pard-probe"))
    except OSError:
        return False
    os.rmdir(os.path.join(folder, ".pard-probe"))
    return True


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data" / "x.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE))
    return path


# --- the shipped models ----------------------------------------------------------------------------------------

def test_zoo_build_publishes_outside_the_package_by_default(tmp_path, monkeypatch):
    import pard.zoo.build as build

    seen = {}
    monkeypatch.setattr(build, "build_zoo", lambda output, work, **kw: seen.update(output=output) or {"members": {}})
    assert main(["zoo", "build", "--only", "draft", "--scale", "0.001", "--work-dir", str(tmp_path / "w")]) == 0
    assert seen["output"] == tmp_path / "w" / "models"


@pytest.mark.parametrize("argv, message", [
    (["--only", "draft", "--scale", "0.001"], "--replace-shipped"),
    (["--only", "smollm2-pard", "--recipe", "full", "--scale", "0.001"], "--replace-shipped"),
    (["--only", "draft", "--scale", "0.001", "--replace-shipped"], "built at --scale 1"),
    (["--only", "smollm2-pard", "--recipe", "full", "--scale", "0.001", "--replace-shipped"], "built at --scale 1"),
    (["--only", "smollm2-pard", "--recipe", "cpu", "--replace-shipped"], "built with the full recipe"),
])
def test_zoo_build_never_replaces_a_shipped_model_unasked_or_with_a_smaller_one(tmp_path, capsys, argv, message):
    before = snapshot(ZOO_DIR)
    code = main(["zoo", "build", "--output", str(ZOO_DIR), "--work-dir", str(tmp_path / "w"), "--device", "cpu",
                 *argv])
    error_line(capsys, code, message)
    assert snapshot(ZOO_DIR) == before
    assert not (tmp_path / "w").exists()  # refused before any stage


def test_zoo_build_of_an_unknown_member_writes_nothing(tmp_path, capsys):
    out = tmp_path / "zoo"
    code = main(["zoo", "build", "--only", "bogus", "--output", str(out), "--work-dir", str(tmp_path / "w")])
    error_line(capsys, code, "unknown zoo member bogus", "smollm2-pard")
    assert not out.exists() and not (tmp_path / "w").exists()


def test_a_smaller_scale_never_publishes_over_a_bigger_build(tmp_path, capsys):
    out = tmp_path / "zoo"
    (out / "draft").mkdir(parents=True)
    (out / "draft" / "config.json").write_text("{}")
    (out / "family.json").write_text(json.dumps({"scale": 1.0, "members": {"draft": {"scale": 0.5}}}))
    before = snapshot(out)
    error_line(capsys, main(["zoo", "build", "--only", "draft", "--scale", "0.1", "--output", str(out),
                             "--work-dir", str(tmp_path / "w")]), "built at --scale 0.5")
    assert snapshot(out) == before


# --- GGUF files ------------------------------------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "pard-cache"
    monkeypatch.setenv("PARD_CACHE", str(path))
    return path


def _cache_entries(cache: Path) -> list[str]:
    folder = cache / "gguf"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


@pytest.mark.parametrize("kind, message", [
    ("embeddings only", "of the model's weights are not in the file"),
    ("mamba", "architecture 'mamba' is not supported"),
    ("no scores", "lacks the field 'scores'"),
    ("truncated", "truncated or corrupt GGUF file"),
])
def test_a_broken_gguf_file_is_one_line_naming_it_and_is_never_cached(tmp_path, cache, capsys, kind, message):
    path = tmp_path / "broken.gguf"
    if kind == "truncated":
        write_tiny_gguf(path, zoo_path("large"))
        path.write_bytes(path.read_bytes()[:200_000])
    else:
        options = {"embeddings only": {"keep_tensors": lambda name: name == "token_embd.weight"},
                   "mamba": {"architecture": "mamba"}, "no scores": {"tokenizer_model": "llama"}}[kind]
        write_tiny_gguf(path, zoo_path("large"), **options)
    for _ in range(2):  # the second run must not reuse anything of the first
        error_line(capsys, main(["generate", "--target", str(path), "--max-new-tokens", "2", "x"]), str(path),
                   message)
    assert _cache_entries(cache) == []


def test_a_gguf_file_with_tensors_the_model_has_no_place_for_is_refused(tmp_path, cache, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "extra.gguf"
    write_tiny_gguf(path, zoo_path("large"))
    reader = gguf.GGUFReader(str(path))
    extra = tmp_path / "x" / "extra.gguf"
    extra.parent.mkdir()
    writer = gguf.GGUFWriter(str(extra), "llama")
    for name, field in reader.fields.items():
        if not name.startswith("GGUF.") and name != "general.architecture":
            kind = field.types[0]
            writer.add_key_value(name, field.contents(), kind,
                                 sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data).reshape(list(reversed(tensor.shape.tolist()))))
    writer.add_tensor("blk.7.attn_q.weight", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    error_line(capsys, main(["generate", "--target", str(extra), "--max-new-tokens", "2", "x"]), "blk.7.attn_q")
    assert _cache_entries(cache) == []


def test_a_missing_gguf_file_is_no_such_file(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare file name, which could also be a hub id
    error_line(capsys, main(["generate", "--target", "missing.gguf", "x"]), "missing.gguf: no such file")


@pytest.mark.parametrize("where", ["file", "read-only"])
def test_a_cache_that_cannot_be_written_is_one_line_naming_pard_cache(tmp_path, monkeypatch, capsys, read_only_dir,
                                                                      where):
    path = tmp_path / "model.gguf"
    write_tiny_gguf(path, zoo_path("large"))
    if where == "file":
        cache = tmp_path / "a-file"
        cache.write_text("mine")
    else:
        cache = read_only_dir / "pard-cache"
    monkeypatch.setenv("PARD_CACHE", str(cache))
    error_line(capsys, main(["generate", "--target", str(path), "x"]), "$PARD_CACHE", str(cache))
    if where == "file":
        assert cache.read_text() == "mine"


def test_stale_staging_directories_of_killed_conversions_are_removed(tmp_path, cache):
    from pard.gguf import dequantized_dir

    path = tmp_path / "model.gguf"
    write_tiny_gguf(path, zoo_path("large"))
    folder = cache / "gguf"
    folder.mkdir(parents=True)
    dead = folder / ".0123abcd.staging.999999999.xyz"  # no such process
    alive = folder / f".4567efgh.staging.{os.getpid()}.xyz"  # a conversion under way (this process)
    for staging in (dead, alive):
        staging.mkdir()
        (staging / "model.safetensors").write_bytes(b"half")
    dequantized_dir(path)
    assert not dead.exists() and alive.exists()


# --- training --------------------------------------------------------------------------------------------------

def _train(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--output", str(out), "-k", "2", "--max-steps", "1", "--batch-size", "2",
            "--max-seq-len", "32", "--no-progress", *extra]


def test_a_slice_of_a_model_built_in_code_trains_and_stores_every_tensor(tmp_path, data):
    from pard.models import load_model

    out = tmp_path / "sliced"
    assert main(_train(data, out, "--model", "tiny:llama", "--slice-layers", "0", "--freeze-embeddings")) == 0
    assert (out / "pard_training.json").exists() and (out / "tokenizer.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert "pard_base_model" not in config and config["num_hidden_layers"] == 1
    assert load_model(str(out)).config.num_hidden_layers == 1


def test_a_draft_sliced_from_a_relative_path_loads_from_anywhere(tmp_path, data, monkeypatch):
    from pard.models import load_model
    from pard.tiny import byte_tokenizer, tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "mymodel")
    byte_tokenizer().save_pretrained(tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    assert main(_train(data, "draft", "--model", "mymodel", "--slice-layers", "0", "--freeze-embeddings")) == 0
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert config["pard_base_model"] == str((tmp_path / "mymodel").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_model(str(tmp_path / "draft")).config.num_hidden_layers == 1


@pytest.mark.parametrize("extra, message", [
    (["--draft-vocab", "1"], "--draft-vocab 1 is too small"),
    (["--slice-layers", "5-2"], "bad range '5-2'"),
    (["--slice-layers", "0--1"], "bad layer list '0--1'"),
])
def test_draft_making_options_that_make_no_useful_draft_are_refused(tmp_path, data, capsys, extra, message):
    out = tmp_path / "out"
    error_line(capsys, main(_train(data, out, "--model", "tiny:llama", *extra)), message)
    assert not out.exists()


# --- regenerate ------------------------------------------------------------------------------------------------

def regen(*extra) -> list[str]:
    return ["regenerate", "--target", "tiny:llama", "--max-new-tokens", "4", "--prefix-tokens", "4", *extra]


def test_regenerate_top_logprobs_beyond_the_vocabulary(tmp_path, data, capsys):
    out = tmp_path / "out.jsonl"
    error_line(capsys, main(regen("--data", str(data), "--output", str(out), "--top-logprobs", "100000")),
               "--top-logprobs", "vocabulary of 259 tokens")
    assert not out.exists()


def test_regenerate_output_under_a_file_or_a_read_only_directory(tmp_path, data, capsys, read_only_dir):
    mine = tmp_path / "userfile"
    mine.write_text("mine")
    error_line(capsys, main(regen("--data", str(data), "--output", str(mine / "x.jsonl"))), "not a directory")
    assert mine.read_text() == "mine"
    error_line(capsys, main(regen("--data", str(data), "--output", str(read_only_dir / "sub" / "x.jsonl"))),
               "cannot write to")


def test_regenerate_resumed_with_another_top_logprobs_width_is_refused(tmp_path, data, capsys):
    out = tmp_path / "out.jsonl"
    assert main(regen("--data", str(data), "--output", str(out), "--top-logprobs", "4", "--limit", "2")) == 0
    before = out.read_bytes()
    capsys.readouterr()
    error_line(capsys, main(regen("--data", str(data), "--output", str(out), "--top-logprobs", "8")),
               "top 4", "--top-logprobs 4")
    assert out.read_bytes() == before


# --- decoding, serving, benchmarks -----------------------------------------------------------------------------

def test_ar_with_k_auto_is_plain_ar(capsys):
    assert main(["generate", "--target", "tiny:llama", "--method", "ar", "-k", "auto", "--max-new-tokens", "3",
                 "--no-chat-template", "ab"]) == 0
    out = capsys.readouterr().out
    assert " ar " in out and "auto" not in out and "K=" not in out


def test_an_absurd_max_k_is_refused_before_loading(capsys, monkeypatch):
    import pard.models

    monkeypatch.setattr(pard.models, "load_pair", lambda *a, **k: pytest.fail("loaded a model"))
    error_line(capsys, main(["generate", "--target", "tiny:llama", "--draft", "tiny:pard", "-k", "auto",
                             "--max-k", "1000", "x"]), "--max-k 1000")


def test_pass_widths_are_capped_by_the_context_window():
    from pard.decoding import SpeculativeDecoder
    from pard.tiny import tiny_model

    target, draft = tiny_model("llama"), tiny_model("pard")
    target.config.max_position_embeddings = draft.config.max_position_embeddings = 40
    decoder = SpeculativeDecoder(target, draft, method="pard", num_draft_tokens="auto", max_draft_tokens=64)
    assert max(decoder._target_buckets()) == 40 and max(decoder._draft_buckets()) == 40


def test_serve_refuses_what_export_refuses_before_converting_the_target(tmp_path, capsys, monkeypatch):
    import pard.specs

    resolve = pard.specs.resolve_spec
    monkeypatch.setattr(pard.specs, "resolve_spec",
                        lambda spec: pytest.fail("converted the target") if spec == "zoo:smollm2" else resolve(spec))
    import pard.cli.interop as interop

    monkeypatch.setattr(interop, "resolve_spec", pard.specs.resolve_spec, raising=False)
    error_line(capsys, main(["serve", "--target", "zoo:smollm2", "--draft", "zoo:smollm2-pard", "--dry-run"]),
               "reduced draft vocabulary")


def test_serve_refuses_a_draft_that_keeps_tensors_in_its_base(tmp_path, data, capsys):
    from pard.tiny import byte_tokenizer, tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "base")
    byte_tokenizer().save_pretrained(tmp_path / "base")
    assert main(_train(data, tmp_path / "d", "--model", str(tmp_path / "base"), "--slice-layers", "0",
                       "--freeze-embeddings")) == 0
    capsys.readouterr()
    error_line(capsys, main(["serve", "--target", str(tmp_path / "base"), "--draft", str(tmp_path / "d"),
                             "--dry-run"]), "live in its base", "pard export")


BENCH = ["bench", "--targets", "tiny:llama", "--draft", "tiny:pard", "--methods", "ar", "pard", "--datasets",
         "humaneval", "--num-prompts", "1", "--max-new-tokens", "4", "--repeats", "1"]


def test_bench_without_matplotlib_writes_its_results_and_says_how_to_get_plots(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    out = tmp_path / "bench"
    assert main([*BENCH, "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert 'pip install "pard-spec[bench]"' in err
    assert (out / "summary.json").exists() and (out / "results.md").exists() and not list(out.glob("*.png"))


def test_a_bad_bench_argument_on_a_busy_machine_is_still_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    one_line_error(capsys, main([*BENCH, "--datasets", "nope", "--output", str(tmp_path / "b")]))
    one_line_error(capsys, main(["bench-latency", "tiny:llama", "--engine", "nope", "--output", str(tmp_path / "l")]))


def test_bench_latency_beyond_the_context_window_is_refused(tmp_path, capsys):
    error_line(capsys, main(["bench-latency", "tiny:llama", "--context", "500", "--tokens", "20", "--output",
                             str(tmp_path / "l")]), "context window of 512")
    assert not (tmp_path / "l").exists()


def test_an_error_under_a_progress_bar_closes_the_bar_first(tmp_path, capsys, monkeypatch):
    from tqdm import tqdm

    import pard.bench.runner as runner
    from pard.errors import DataError

    monkeypatch.setattr(runner, "_timed_pass", lambda *a: (_ for _ in ()).throw(DataError("broken prompt")))
    code = main([*BENCH, "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and err.rstrip().splitlines()[-1] == "pard: error: broken prompt"
    assert not list(tqdm._instances)  # no bar left to redraw over the error


def test_library_warnings_are_debug_detail(recwarn, monkeypatch):
    import pard.cli.generate as generate

    def noisy(args):
        warnings.warn("an inductor warning", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(generate, "run", noisy)
    assert main(["generate", "--target", "tiny:llama", "x"]) == 0
    assert not [w for w in recwarn if "inductor" in str(w.message)]  # not shown
    assert main(["--debug", "generate", "--target", "tiny:llama", "x"]) == 0
    assert [w for w in recwarn if "inductor" in str(w.message)]  # shown with --debug

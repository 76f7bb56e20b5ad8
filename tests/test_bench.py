"""`pard bench`: dataset loaders and a tiny end-to-end run (the numbers themselves are never asserted)."""

import json
from pathlib import Path

import pytest

from pard import load_model
from pard.bench.datasets import load_prompts
from pard.cli import main
from pard.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_humaneval_offline():
    prompts = load_prompts("humaneval")
    assert len(prompts) == 164 and prompts[0].id == "HumanEval/0" and "def has_close_elements" in prompts[0].text


def test_stdlib_heldout_prompts():
    prompts = load_prompts("stdlib", limit=5)
    assert len(prompts) == 5 and all(p.text.strip() for p in prompts)


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data (offline copies of GSM8K and Spec-Bench)")
def test_named_benchmarks_from_local_copies():
    gsm = load_prompts(f"gsm8k={SHARED / 'gsm8k_test.jsonl'}")
    assert len(gsm) == 1319 and gsm[0].text.startswith("Janet")
    spec = load_prompts(f"spec-bench={SHARED / 'specbench_question.jsonl'}", limit=3)
    assert spec[0].id == "81" and spec[0].text.startswith("Compose an engaging travel blog")


def test_local_jsonl_with_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "instruction": "write"}\n{"id": "b", "instruction": "read"}\n')
    assert [p.text for p in load_prompts(str(path), prompt_field="instruction")] == ["write", "read"]
    with pytest.raises(DataError, match="no prompt field"):
        load_prompts(str(path))
    with pytest.raises(DataError, match="unknown dataset"):
        load_prompts("nope")


def test_offline_hub_dataset_says_how_to_use_a_local_copy():
    with pytest.raises(DataError, match="gsm8k=PATH.jsonl"):
        load_prompts("gsm8k")


def test_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--targets", "tiny:llama", "tiny:qwen2", "--draft", "tiny:pard", "--ar-draft", "tiny:draft",
                 "--datasets", "humaneval", "--ks", "1", "3", "--batch-sizes", "1", "2", "--num-prompts", "3",
                 "--max-new-tokens", "8", "--repeats", "1", "--output", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["measurements"]
    methods = {m["method"] for m in rows}
    assert methods == {"ar", "vsd", "pard", "hf-ar", "hf-assisted", "hf-prompt-lookup"}
    assert {m["target"] for m in rows} == {"tiny:llama", "tiny:qwen2"}
    # Greedy: every method reproduced ar's outputs (transformers' too).
    assert all(m["mismatches"] == 0 for m in rows if m["method"] != "ar")
    ar = {(m["target"], m["dataset"], m["batch_size"]): m["tokens_per_second"] for m in rows if m["method"] == "ar"}
    for m in rows:  # speedups divide by ar on the same target, dataset and batch size of this run
        assert m["speedup"] == pytest.approx(m["tokens_per_second"] / ar[m["target"], m["dataset"], m["batch_size"]])
    assert all(len(m["acceptance_per_position"]) == m["k"] for m in rows if m["method"] in {"vsd", "pard"})
    # transformers' assisted / prompt-lookup decoding only run at batch size 1.
    assert not [m for m in rows if m["method"] in {"hf-assisted", "hf-prompt-lookup"} and m["batch_size"] > 1]
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["matches_ar"] is True
    for name in ["results.md", "speedup_vs_k.png", "acceptance.png", "speedup_by_target.png"]:
        assert (out / name).stat().st_size > 0
    assert "greedy outputs differing from ar: 0" in capsys.readouterr().out


def test_bench_auto_k_and_the_load_record(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "--targets", "tiny:llama", "--draft", "tiny:pard", "--ar-draft", "tiny:draft",
                 "--methods", "ar", "pard", "vsd", "hf-assisted", "--datasets", "humaneval", "-k", "2", "auto",
                 "--max-k", "4", "--num-prompts", "2", "--max-new-tokens", "12", "--repeats", "1", "--output",
                 str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    auto = [m for m in summary["measurements"] if m["k"] == "auto"]
    assert {m["method"] for m in auto} == {"pard", "vsd", "hf-assisted"}
    assert all(m["mismatches"] == 0 for m in auto)
    for m in auto:
        if m["method"] != "hf-assisted":  # which k each step verified, 0..K_max, one entry per step
            assert m["chosen_k"] and all(0 <= k <= 4 for k in m["chosen_k"]) and 0 <= m["speculative_fraction"] <= 1
    assert "start" in summary["load_average"] and (out / "chosen_k.png").stat().st_size > 0
    assert "K=auto" in (out / "results.md").read_text()


def test_bench_times_a_cell_side_by_side_after_warming_every_configuration(tmp_path, monkeypatch):
    """All warm-ups (a batch of every batch size, longest prompts first) before any timed pass, then rounds of one
    pass per configuration: a slow phase of the machine hits every configuration of a round alike."""
    from pard.bench import runner
    from pard.bench.config import BenchConfig

    calls = []
    real_runner = runner._runner

    def recording_runner(method, k, *args, **kwargs):
        run = real_runner(method, k, *args, **kwargs)

        def recorded(batch, seed):
            calls.append((method, k, len(batch), max(map(len, batch)), seed))
            return run(batch, seed)

        return recorded

    monkeypatch.setattr(runner, "_runner", recording_runner)
    summary = runner.run_bench(BenchConfig(
        targets=["tiny:llama"], draft="tiny:pard", ar_draft=None, methods=["ar", "pard"], ks=[1, 2],
        num_prompts=3, max_new_tokens=4, repeats=2, warmup=1, batch_sizes=[1, 2], engines=["eager"],
        output=str(tmp_path / "b")))
    configs = [("ar", None), ("pard", 1), ("pard", 2)]
    lengths = sorted({length for *_, length, _ in calls})
    # Batch size 1: one warm-up each, on the longest prompt; then two rounds, each timing every configuration over
    # the 3 prompts, in plan order, with the round's seed.
    warm_ups, timed, calls = calls[:3], calls[3:21], calls[21:]
    assert [(m, k) for m, k, *_ in warm_ups] == configs and {c[3] for c in warm_ups} == {lengths[-1]}
    assert [(m, k, seed) for m, k, _, _, seed in timed] == [(m, k, r) for r in range(2) for m, k in configs
                                                            for _ in range(3)]
    # Batch size 2 (batches of 2 and 1 prompts): every configuration warms up both shapes before any is timed.
    warm_ups, timed = calls[:6], calls[6:]
    assert [(m, k, rows) for m, k, rows, _, _ in warm_ups] == [(m, k, rows) for m, k in configs for rows in (2, 1)]
    assert [(m, k, rows, seed) for m, k, rows, _, seed in timed] == [
        (m, k, rows, r) for r in range(2) for m, k in configs for rows in (2, 1)]
    rows = summary["measurements"]
    assert [len(m["seconds"]) for m in rows] == [2] * 6 and all(m["mismatches"] == 0 for m in rows if m["k"])


def test_bench_warns_on_a_busy_machine(monkeypatch, capsys):
    import os

    from pard.bench.runner import busy_machine_check

    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert busy_machine_check() == 9.0
    assert "the machine is busy (load average 9.0 on 2 cores)" in capsys.readouterr().err


def test_bench_latency(tmp_path, capsys):
    out = tmp_path / "latency"
    assert main(["bench-latency", "tiny:llama", "tiny:pard", "--max-tokens", "3", "--context", "8", "--repeats", "1",
                 "--output", str(out)]) == 0
    results = json.loads((out / "summary.json").read_text())["results"]
    assert set(results) == {"tiny:llama", "tiny:pard"}
    assert all(len(r["ms"]) == 3 and r["ratio"][0] == 1.0 for r in results.values())
    assert (out / "latency.png").stat().st_size > 0 and "n=3" in capsys.readouterr().out


def test_bench_latency_times_the_kernel_and_the_library_in_turns(tmp_path):
    from pard.kernels import kernel_isa

    if kernel_isa() is None:
        pytest.skip("the kernel could not be built here (no C++ compiler)")
    out = tmp_path / "latency"
    assert main(["bench-latency", "tiny:llama", "--engine", "static", "--matmuls", "kernel", "library", "--tokens", "1",
                 "3", "--context", "8", "--repeats", "2", "--output", str(out)]) == 0
    results = json.loads((out / "summary.json").read_text())["results"]
    kernel, library = results[f"tiny:llama [kernel {kernel_isa()}]"], results["tiny:llama [library]"]
    # the kernel's packed copy: every weight of the decoder layers and the head, padded to 16-row panels
    assert kernel["packed_bytes"] >= 4 * sum(p.numel() for n, p in load_model("tiny:llama").named_parameters()
                                             if p.dim() == 2 and "embed" not in n)
    assert library["packed_bytes"] == 0 and len(kernel["ms"]) == len(library["ms"]) == 2
    assert "the kernel's packed copy of the weights: tiny:llama [kernel" in (out / "results.md").read_text()


def test_the_llama_cpp_peer_is_left_out_in_one_line_without_its_package(tmp_path, capsys, monkeypatch):
    import importlib.util

    from helpers import write_tiny_gguf
    from pard.zoo import zoo_path

    monkeypatch.setenv("PARD_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    write_tiny_gguf(model, zoo_path("large"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp"
                        else find_spec(name, *a))
    out = tmp_path / "bench"
    assert main(["bench", "--targets", str(model), "--methods", "ar", "llama-cpp", "--datasets", "humaneval",
                 "--num-prompts", "1", "--max-new-tokens", "4", "--repeats", "1", "--output", str(out)]) == 0
    assert "llama-cpp left out: it needs llama-cpp-python (pip install llama-cpp-python" in capsys.readouterr().err
    assert {m["method"] for m in json.loads((out / "summary.json").read_text())["measurements"]} == {"ar"}


def test_a_llama_cpp_that_crashes_is_left_out_in_one_line_and_the_bench_goes_on(tmp_path, capsys, monkeypatch):
    """llama.cpp's AMX backend can die of a fault at the first token: tried in a child process first."""
    import importlib.util

    from helpers import write_tiny_gguf
    from pard.bench import runner
    from pard.zoo import zoo_path

    monkeypatch.setenv("PARD_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    write_tiny_gguf(model, zoo_path("large"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp"
                        else find_spec(name, *a))
    monkeypatch.setattr(runner, "LLAMA_CPP_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    out = tmp_path / "bench"
    assert main(["bench", "--targets", str(model), "--methods", "ar", "llama-cpp", "--datasets", "humaneval",
                 "--num-prompts", "1", "--max-new-tokens", "4", "--repeats", "1", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "llama-cpp left out: llama.cpp was killed by SIGSEGV on this CPU" in err
    assert {m["method"] for m in json.loads((out / "summary.json").read_text())["measurements"]} == {"ar"}


def test_the_llama_cpp_peer_runs_gguf_targets(capsys):
    assert main(["bench", "--targets", "tiny:llama", "--methods", "ar", "llama-cpp", "--num-prompts", "1"]) == 2
    assert "runs GGUF targets" in capsys.readouterr().err


def test_the_llama_cpp_peer_measures_the_gguf_file(tmp_path, monkeypatch):
    """Where llama-cpp-python is installed (not in the test extra: it builds llama.cpp from source)."""
    pytest.importorskip("llama_cpp")
    from helpers import write_tiny_gguf
    from pard.zoo import zoo_path

    monkeypatch.setenv("PARD_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    write_tiny_gguf(model, zoo_path("large"))
    out = tmp_path / "bench"
    assert main(["bench", "--targets", str(model), "--methods", "ar", "llama-cpp", "--datasets", "humaneval",
                 "--num-prompts", "2", "--max-new-tokens", "6", "--repeats", "1", "--output", str(out)]) == 0
    rows = {m["method"]: m for m in json.loads((out / "summary.json").read_text())["measurements"]}
    assert rows["llama-cpp"]["tokens"] > 0 and rows["llama-cpp"]["mismatches"] is None  # F32 file: not compared

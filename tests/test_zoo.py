"""The embedded family: committed, small, a realistic family, and it serves PARD losslessly."""

import json

import pytest
from safetensors import safe_open

from conftest import hf_greedy
from pard import SpeculativeDecoder, load_pair
from pard.cli import main
from pard.zoo import FAMILY, TARGETS, ZOO_DIR, zoo_path

family = json.loads((ZOO_DIR / "family.json").read_text())


def test_held_out_losses_are_recorded_for_every_member():
    assert set(family["members"]) == set(FAMILY)
    assert all(2.0 < m["heldout_loss"] < 6.0 for m in family["members"].values())


def test_every_member_is_committed_in_16_bit_under_60_mb():
    total = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert total <= 60 * 1024 * 1024
    for name in FAMILY:
        with safe_open(str(zoo_path(name) / "model.safetensors"), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}


@pytest.mark.xfail(
    strict=True,
    reason="issue 4 open: the first build's medium/large targets are under-trained for the 90-minute budget and "
    "lose to the draft on held-out loss (family.json); strict, so it fails loudly once a rebuilt family passes",
)
def test_targets_beat_the_draft_and_grow_with_size():
    members = family["members"]
    draft_loss = members["draft"]["heldout_loss"]
    losses = [members[t]["heldout_loss"] for t in TARGETS]
    assert all(loss < draft_loss for loss in losses)
    assert losses == sorted(losses, reverse=True)  # small > medium > large
    sizes = [members[t]["parameters"] for t in TARGETS]
    assert sizes == sorted(sizes) and sizes[0] > members["draft"]["parameters"]


def test_pard_member_is_a_parallel_draft_of_the_draft():
    config = json.loads((zoo_path("pard") / "config.json").read_text())
    info = json.loads((zoo_path("pard") / "pard_training.json").read_text())
    assert config["spd_type"] == "pard" and isinstance(config["pard_token"], int)
    assert info["num_draft_tokens"] == 8 and info["retention"] == 0.7 and info["min_retention"] == 0.2
    assert info["base_model"].endswith("draft")


@pytest.mark.parametrize("target", TARGETS)
def test_zoo_pard_is_lossless_on_every_target(target):
    pair = load_pair(f"zoo:{target}", "zoo:pard", device="cpu")
    prompt = pair.tokenizer("def is_palindrome(s: str) -> bool:\n")["input_ids"]
    out = SpeculativeDecoder(pair.target, pair.draft, method="pard", num_draft_tokens=8,
                             target_tokenizer=pair.tokenizer, draft_tokenizer=pair.draft_tokenizer).generate(
        [prompt], max_new_tokens=40)
    assert out.sequences[0] == hf_greedy(pair.target, prompt, 40)
    assert out.stats.acceptance_per_position[0] > 0.3  # a trained draft, not a random one


def test_zoo_list_and_demo(tmp_path, capsys):
    assert main(["zoo", "list"]) == 0
    assert "zoo:large" in capsys.readouterr().out
    assert main(["demo", "--num-prompts", "1", "--max-new-tokens", "24", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "identical output from ar, vsd and pard: yes" in out and "pard K=8" in out


def test_unknown_zoo_member(capsys):
    assert main(["generate", "--target", "zoo:huge", "x"]) != 0
    assert "unknown zoo model 'huge'" in capsys.readouterr().err


def test_zoo_build_pipeline_at_tiny_scale(tmp_path):
    """The whole recipe (tokenizer, every member, the PARD adaptation, evaluation) at 0.2% of its steps."""
    from pard.zoo.build import build_zoo

    result = build_zoo(tmp_path / "zoo", tmp_path / "work", scale=0.002, progress=False)
    assert set(result["members"]) == set(FAMILY)
    assert json.loads((tmp_path / "zoo" / "pard" / "config.json").read_text())["spd_type"] == "pard"

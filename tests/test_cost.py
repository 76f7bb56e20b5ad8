"""Appendix A's training-cost arithmetic, and the training-cost benchmark's outputs."""

import json

import pytest

from pard.cli import main
from pard.training import CODConfig
from pard.training.cost import FlopsInputs, cod_token_factor, training_pflops


def test_cod_token_factor_matches_paper():
    # Appendix A: "3.37M is the effective input token count after applying mask prediction with COD" (K=8, r=0.7,
    # r_min=0.2); without dropping it is K.
    assert cod_token_factor(CODConfig(8, 0.7, 0.2)) == pytest.approx(3.37, abs=0.005)
    assert cod_token_factor(CODConfig(8, 1.0, 0.0)) == 8
    # Eq. 10 with r_min = 0: N (1 - r^K) / (1 - r) < N / (1 - r).
    assert cod_token_factor(CODConfig(8, 0.5, 0.0)) == pytest.approx((1 - 0.5**8) / 0.5)


def test_appendix_a_pflops():
    table = training_pflops(FlopsInputs(), CODConfig(8, 0.7, 0.2))
    assert table["PARD"]["total"] == pytest.approx(20.22, abs=0.05)
    assert table["EAGLE"]["forward"] == pytest.approx(143.74, abs=0.01)
    assert table["EAGLE"]["total"] == pytest.approx(149.20, abs=0.01)
    assert table["EAGLE-3"]["total"] == pytest.approx(204.4, abs=0.01)
    assert table["EAGLE"]["total"] / table["PARD"]["total"] == pytest.approx(7.4, abs=0.1)  # "7x"


def test_flops_cli_json(capsys):
    assert main(["flops", "--json", "--target-params", "8e9"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pflops_per_1m_tokens"]["EAGLE"]["total"] < 149.2


def test_bench_train_writes_json_markdown_and_plot(tmp_path, capsys):
    assert main(["bench-train", "--model", "tiny:draft", "--data", "stdlib:heldout", "--output", str(tmp_path),
                 "-k", "4", "--max-seq-len", "64", "--batch-size", "2", "--steps", "3", "--repeats", "1"]) == 0
    results = json.loads((tmp_path / "train_cost.json").read_text())
    cod, full = results["layouts"]["COD"], results["layouts"]["no drop (r=1)"]
    assert full["measured_tokens_per_sequence_token"] > cod["measured_tokens_per_sequence_token"]
    assert results["epoch_time_ratio"] == pytest.approx(full["seconds_per_epoch"] / cod["seconds_per_epoch"])
    assert cod["analytic_tokens_per_sequence_token"] == pytest.approx(cod_token_factor(CODConfig(4)))
    assert (tmp_path / "train_cost.png").stat().st_size > 1000
    assert "COD trains an epoch" in (tmp_path / "train_cost.md").read_text()

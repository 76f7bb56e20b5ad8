"""The layout's promises: commands load only what they need, and no module imports what sits above it."""

import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """The module names loaded by a fresh interpreter after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("argv", [
    ["export", "tiny:pard", "--output", "OUT"],
    ["serve", "--target", "tiny:llama", "--draft", "tiny:pard", "--dry-run"],
])
def test_export_and_serve_start_without_the_trainer(argv, tmp_path):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    loaded = modules_after(f"from pard.cli import main\nassert main({argv!r}) in (0, 2)")
    assert "transformers.trainer" not in loaded and "datasets" not in loaded
    assert "pard.training.trainer" not in loaded


def test_import_pard_and_building_the_cli_do_not_load_torch():
    # Ctrl-C during start-up must reach main()'s handler, and `pard --help` must be quick: nothing heavy loads
    # before a command runs.
    assert "torch" not in modules_after("import pard.cli\npard.cli.build_parser()")


@pytest.mark.parametrize("module, forbidden", [
    ("pard.models", ("pard.zoo.build", "pard.training", "pard.decoding")),
    ("pard.decoding", ("pard.training", "pard.zoo.build", "pard.bench")),
    ("pard.training.loss", ("pard.decoding",)),
    ("pard.training.rundir", ("transformers.trainer", "datasets")),
])
def test_no_arrows_up_or_across(module, forbidden):
    loaded = modules_after(f"import {module}")
    assert not [m for m in loaded if m.startswith(forbidden)]

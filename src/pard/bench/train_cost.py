"""`pard bench-train`: the measured training cost of COD against the no-drop layout (paper Figure 5a, ~3x).

The same model on the same data, K fixed, trained for the same number of optimizer steps with COD (r, r_min) and
without (r = 1); runs alternate and repeat, and per-step times exclude the first steps (warm-up). Reports packed
tokens per sequence (measured and Eq. 10/11), tokens/s, seconds per step and per epoch, and the ratio.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..errors import InvalidArgumentError
from ..files import atomic_write_text
from ..training.cod import CODConfig
from ..training.config import DataConfig, TrainConfig
from ..training.cost import cod_token_factor
from ..training.rundir import TRAINING_INFO_FILE
from ..training.trainer import train
from .report import machine_info, markdown_table, plot_or_note, save_figure, write_json

WARMUP_STEPS = 2


class StepTimer(TrainerCallback):
    def __init__(self):
        self.durations: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._start)


def run_training_cost(
    model: str,
    data: list[str],
    output: Path,
    *,
    cod: CODConfig | None = None,
    max_seq_len: int = 512,
    batch_size: int = 8,
    steps: int = 20,
    repeats: int = 3,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> dict:
    if steps <= WARMUP_STEPS:
        raise InvalidArgumentError(f"--steps must exceed the {WARMUP_STEPS} warm-up steps excluded from the timing, "
                                   f"got {steps}")
    if repeats < 1 or batch_size < 1:
        raise InvalidArgumentError("--repeats and --batch-size must be >= 1")
    cod = cod or CODConfig()
    layouts = {"COD": cod, "no drop (r=1)": CODConfig(cod.num_draft_tokens, 1.0, 1.0)}
    base = TrainConfig(
        model=model, data=data, output="", data_config=DataConfig(max_seq_len=max_seq_len), max_steps=steps,
        learning_rate=learning_rate, batch_size=batch_size, save_steps=10**9, logging_steps=10**9, seed=seed,
        disable_progress=True,
    )
    base.validate()
    samples = {name: [] for name in layouts}
    runs = [(i, name) for i in range(repeats) for name in layouts]  # alternate, so drift hits both alike
    output.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=output, prefix=".runs-"))  # the throw-away trainings, removed at the end
    try:
        for i, name in tqdm(runs, desc="training-cost runs"):
            samples[name].append(_timed_run(replace(base, cod=layouts[name], output=str(scratch / f"{name}-{i}"))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results = {"machine": machine_info(), "model": model, "data": data, "num_draft_tokens": cod.num_draft_tokens,
               "max_seq_len": max_seq_len, "batch_size": batch_size, "steps": steps, "repeats": repeats, "layouts": {}}
    for name, layout in layouts.items():
        step = statistics.median(s["seconds_per_step"] for s in samples[name])
        tokens = statistics.median(s["packed_tokens_per_step"] for s in samples[name])
        epoch_steps = samples[name][0]["steps_per_epoch"]
        results["layouts"][name] = {
            "r": layout.retention,
            "r_min": layout.min_retention,
            "analytic_tokens_per_sequence_token": cod_token_factor(layout),
            "measured_tokens_per_sequence_token": tokens / (batch_size * max_seq_len),
            "seconds_per_step": step,
            "tokens_per_second": tokens / step,
            "seconds_per_epoch": step * epoch_steps,
            "runs": samples[name],
        }
    cod_row, full_row = results["layouts"]["COD"], results["layouts"]["no drop (r=1)"]
    results["epoch_time_ratio"] = full_row["seconds_per_epoch"] / cod_row["seconds_per_epoch"]
    results["analytic_token_ratio"] = full_row["analytic_tokens_per_sequence_token"] / cod_row[
        "analytic_tokens_per_sequence_token"]
    write_json(output / "train_cost.json", results)
    atomic_write_text(output / "train_cost.md", training_cost_markdown(results))
    plot_or_note(plot_training_cost, results, output / "train_cost.png")
    return results


def _timed_run(config: TrainConfig) -> dict:
    timer = StepTimer()
    train(config, callbacks=[timer])
    info = json.loads((Path(config.output) / TRAINING_INFO_FILE).read_text())
    return {
        "seconds_per_step": statistics.median(timer.durations[WARMUP_STEPS:]),
        "packed_tokens_per_step": info["packed_tokens"] / info["steps"],
        "steps_per_epoch": math.ceil(info["training_sequences"] / info["batch_size"]),
    }


def training_cost_markdown(results: dict) -> str:
    headers = ["layout", "r", "r_min", "tokens/seq token (Eq. 10/11)", "measured", "tokens/s", "s/step", "s/epoch"]
    rows = [
        [name, v["r"], v["r_min"], v["analytic_tokens_per_sequence_token"], v["measured_tokens_per_sequence_token"],
         f"{v['tokens_per_second']:,.0f}", f"{v['seconds_per_step']:.3f}", f"{v['seconds_per_epoch']:,.0f}"]
        for name, v in results["layouts"].items()
    ]
    m = results["machine"]
    return (
        markdown_table(headers, rows)
        + f"\nCOD trains an epoch **{results['epoch_time_ratio']:.2f}x** faster than the no-drop layout "
        f"(analytic token ratio {results['analytic_token_ratio']:.2f}x); K = {results['num_draft_tokens']}, "
        f"{results['max_seq_len']}-token sequences, batch {results['batch_size']}, medians of {results['repeats']} "
        f"alternating runs of {results['steps']} steps (first {WARMUP_STEPS} excluded), {m['cpu_cores']} CPU cores"
        f"{', ' + m['cuda'] if m['cuda'] else ''}.\n"
    )


def plot_training_cost(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["layouts"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(names, [results["layouts"][n]["seconds_per_epoch"] for n in names], color=["tab:green", "tab:gray"])
    axes[0].set_ylabel("seconds per epoch")
    axes[1].bar(names, [results["layouts"][n]["measured_tokens_per_sequence_token"] for n in names],
                color=["tab:green", "tab:gray"])
    axes[1].set_ylabel("packed tokens per sequence token")
    ratio = results["epoch_time_ratio"]
    fig.suptitle(f"PARD training cost, K = {results['num_draft_tokens']}: COD {ratio:.2f}x faster")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)

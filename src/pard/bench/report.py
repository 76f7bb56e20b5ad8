"""Writing results: JSON, markdown tables, PNG plots."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

from ..files import atomic_write_bytes, atomic_write_text


def machine_info() -> dict:
    """What the numbers were measured on."""
    import os

    return {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    """The CPU's name and its widest vector extension (what the small-row kernel and the library GEMMs use)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{name} ({vector})" if vector else name


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


PLOTS_NOTE = 'pard: plots skipped: they need matplotlib (pip install "pard-spec[bench]")'


def plot_or_note(plot, *args):
    """``plot(*args)`` when matplotlib is installed (the ``bench`` extra); otherwise one line on stderr saying how to
    get plots, and None: the results themselves are written either way."""
    import importlib.util
    import sys

    if importlib.util.find_spec("matplotlib") is None:
        print(PLOTS_NOTE, file=sys.stderr)
        return None
    return plot(*args)


def save_figure(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically (a half-written plot never replaces the previous one)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _label(m: dict) -> str:
    return m["method"] + (f" K={m['k']}" if m["k"] else "")


def _rows(summary: dict) -> list[dict]:
    """The measurements; when several engine paths ran side by side, each of our methods is named with its path
    ("ar [eager]", "pard [compiled]") so that tables and plots keep them apart."""
    rows = summary["measurements"]
    if len({m.get("engine") for m in rows if m.get("engine")}) < 2:
        return rows
    return [{**m, "method": f"{m['method']} [{m['engine']}]"} if m.get("engine") else m for m in rows]


def bench_markdown(summary: dict) -> str:
    """The paper's table shapes: per configuration tokens/s, speedup over ar, τ and 1-α per dataset (Tables 1/2),
    speedup against K (Figure 5b) and against batch size (Table 5) when those vary."""
    rows = _rows(summary)
    config = summary["config"]
    datasets = list(dict.fromkeys(m["dataset"] for m in rows))
    keys = list(dict.fromkeys((m["target"], m["method"], m["k"], m["batch_size"]) for m in rows))
    by_key = {(m["target"], m["method"], m["k"], m["batch_size"], m["dataset"]): m for m in rows}
    headers = ["target", "method", "batch"]
    for d in datasets:
        headers += [f"{d} tok/s", f"{d} speedup", f"{d} τ", f"{d} 1-α"]
    headers.append("mismatches vs ar")
    table = []
    for target, method, k, batch in keys:
        row = [target, _label({"method": method, "k": k}), batch]
        mismatches = []
        for d in datasets:
            m = by_key.get((target, method, k, batch, d))
            if m is None:
                row += ["", "", "", ""]
                continue
            alpha = m["acceptance_per_position"]
            row += [f"{m['tokens_per_second']:.1f}", f"{m['speedup']:.2f}x",
                    "" if m["mean_accepted_length"] is None else f"{m['mean_accepted_length']:.2f}",
                    f"{alpha[0]:.2f}" if alpha else ""]
            if m["mismatches"] is not None:
                mismatches.append(m["mismatches"])
        row.append(sum(mismatches) if mismatches else "")
        table.append(row)
    sampling = "greedy" if config["temperature"] == 0 else f"temperature {config['temperature']}"
    machine, load = summary["machine"], summary.get("load_average", {})
    text = [
        markdown_table(headers, table),
        f"\n{sampling}; {config['num_prompts']} prompts per dataset, up to {config['max_new_tokens']} new tokens; "
        f"tokens/s = median of {config['repeats']} timed rounds (each configuration once per round, side by side) "
        f"after {config['warmup']} untimed warm-up round(s) of every configuration; "
        f"speedup = tokens/s over ar on the same target, dataset, batch size and engine path in this run "
        f"(transformers' methods: over the first engine's ar); compilation time excluded (compile_seconds in "
        f"summary.json); dtype "
        f"{config['dtype']}; {machine['cpu_cores']} CPU cores ({machine['torch_threads']} torch threads)"
        f"{', ' + machine['cuda'] if machine['cuda'] else ''}"
        + (f"; load average {load['start']} at the start, {load['end']} at the end" if load.get("start") is not None
           else "") + ".\n",
    ]
    ks = sorted({m["k"] for m in rows if m["k"]}, key=_k_order)
    if len(ks) > 1:
        pivot = []
        for target, method in dict.fromkeys((m["target"], m["method"]) for m in rows if m["k"]):
            cells = []
            for k in ks:
                ms = [m for m in rows if (m["target"], m["method"], m["k"]) == (target, method, k)]
                cells.append(f"{statistics.mean(m['speedup'] for m in ms):.2f}x" if ms else "")
            pivot.append([target, method, *cells])
        text += ["\nSpeedup over ar against K (mean over datasets and batch sizes):\n\n",
                 markdown_table(["target", "method", *[f"K={k}" for k in ks]], pivot)]
    batches = sorted({m["batch_size"] for m in rows})
    if len(batches) > 1:
        pivot = []
        for target, method, k in dict.fromkeys((m["target"], m["method"], m["k"]) for m in rows):
            cells = []
            for b in batches:
                ms = [m for m in rows if (m["target"], m["method"], m["k"], m["batch_size"]) == (target, method, k, b)]
                cells.append(f"{statistics.mean(m['speedup'] for m in ms):.2f}x" if ms else "")
            pivot.append([target, _label({"method": method, "k": k}), *cells])
        text += ["\nSpeedup over ar against batch size (mean over datasets):\n\n",
                 markdown_table(["target", "method", *[f"bs={b}" for b in batches]], pivot)]
    return "".join(text)


def bench_plots(summary: dict, out_dir: Path) -> list[Path]:
    """speedup_vs_k.png, acceptance.png, speedup_by_target.png (whichever the measurements support)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(summary)
    written = []
    targets = list(dict.fromkeys(m["target"] for m in rows))
    ks = sorted({m["k"] for m in rows if isinstance(m["k"], int)})
    if len(ks) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))

        def mean_speedup(target, method, k):
            found = [m["speedup"] for m in rows if (m["target"], m["method"], m["k"]) == (target, method, k)]
            return statistics.mean(found) if found else None

        styles = {"pard": "-o", "pard-plain": "-.o", "vsd": "--s", "hf-assisted": ":^"}
        for target in targets:
            for method in dict.fromkeys(m["method"] for m in rows if m["method"].split(" ")[0] in styles):
                style = styles[method.split(" ")[0]]
                pts = [(k, mean_speedup(target, method, k)) for k in ks if mean_speedup(target, method, k)]
                if pts:
                    line = ax.plot(*zip(*pts), style, label=f"{method} · {target}")[0]
                    auto = mean_speedup(target, method, "auto")
                    if auto:  # -k auto is one number per method: a level line in the same colour
                        ax.axhline(auto, color=line.get_color(), linestyle=":", linewidth=1,
                                   label=f"{method} · {target} · -k auto")
        ax.set_xlabel("K (draft tokens per step)")
        written.append(_finish_speedup_plot(fig, ax, "Speedup vs K", out_dir / "speedup_vs_k.png"))
    with_alpha = [m for m in rows if m["acceptance_per_position"]]
    if with_alpha:
        fig, ax = plt.subplots(figsize=(6, 4))
        kmax = max((m["k"] for m in with_alpha), key=_k_order)
        for m in with_alpha:
            if m["k"] == kmax and m["batch_size"] == min(x["batch_size"] for x in with_alpha):
                alpha = m["acceptance_per_position"]
                ax.plot(range(1, len(alpha) + 1), alpha, "-o" if m["method"].startswith("pard") else "--s",
                        label=f"{m['method']} · {m['target']} · {m['dataset']}")
        ax.set_xlabel("position k")
        ax.set_ylabel("k-α (first k draft tokens accepted)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title(f"Acceptance per position (K={kmax})")
        fig.tight_layout()
        written.append(out_dir / "acceptance.png")
        save_figure(fig, written[-1])
        plt.close(fig)
    adaptive = [m for m in rows if m.get("chosen_k")]
    if adaptive:  # -k auto: which k each step verified, over the first prompt's generation
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for m in adaptive:
            ax.step(range(1, len(m["chosen_k"]) + 1), m["chosen_k"], where="mid",
                    label=f"{m['method']} · {m['target']} · {m['dataset']} · batch {m['batch_size']}")
        ax.set_xlabel("decoding step")
        ax.set_ylabel("k verified (0 = plain decoding)")
        ax.legend(fontsize=7)
        ax.set_title("-k auto: verification length chosen per step")
        fig.tight_layout()
        written.append(out_dir / "chosen_k.png")
        save_figure(fig, written[-1])
        plt.close(fig)
    methods = [x for x in dict.fromkeys(m["method"] for m in rows) if x != "ar"]  # ar [compiled]: the engine's gain
    batches = sorted({m["batch_size"] for m in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(targets) * len(batches)), 4))
    groups = [(t, b) for t in targets for b in batches]
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        heights = []
        for t, b in groups:
            ms = [m for m in rows if (m["target"], m["method"], m["batch_size"]) == (t, method, b)]
            heights.append(max((m["speedup"] for m in ms), default=0.0))
        ax.bar([i + j * width for i in range(len(groups))], heights, width, label=f"{method} (best K)")
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{t}\nbs={b}" for t, b in groups], fontsize=8)
    title = "Speedup per target and batch size"
    written.append(_finish_speedup_plot(fig, ax, title, out_dir / "speedup_by_target.png"))
    return written


def _finish_speedup_plot(fig, ax, title: str, path: Path) -> Path:
    """The shared end of the speedup plots: the AR = 1 line, labels, legend, save, close."""
    import matplotlib.pyplot as plt

    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("speedup over AR")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _k_order(k) -> tuple:
    """Fixed K ascending, then ``auto``."""
    return (isinstance(k, str), k if isinstance(k, int) else 0)


"""`pard zoo build --only smollm2-pard`: the PARD draft this project makes for SmolLM2-135M-Instruct.

SmolLM2 has no smaller sibling to adapt, so the draft is cut from SmolLM2 itself (``pard train`` options, usable
for any family):

1. prompts: coding requests about the stdlib's own functions (:func:`pard.corpus.stdlib_chat_prompts`, rebuilt
   offline anywhere, disjoint from the benchmarks), plus any prompt files given (``--prompts``);
2. data: SmolLM2's own greedy answers to them (``pard regenerate``): the draft learns what the target says;
3. draft: a slice of SmolLM2 (its first LAYERS decoder layers, embeddings, final norm) with a head over the
   DRAFT_VOCAB tokens its answers use most (FR-Spec), embeddings frozen, trained with COD (K = 8) on the answers
   (``--slice-layers --draft-vocab --freeze-embeddings``), in the full recipe plus distillation from SmolLM2's
   distributions by a SmolLM2 forward over each batch (``--distill-from zoo:smollm2``), in ``cpu-distilled`` from
   the top-16 that regeneration stored (``regenerate --top-logprobs 16``, ``--distill-from data``);
4. the result is stored in bf16 without the embeddings (they are SmolLM2's, taken from ``zoo:smollm2`` at load).

Recipes (RECIPES): ``full``, what the committed draft was built with on a GPU; ``cpu``, for 2 CPU cores (shorter
answers, a next-token phase before COD); ``cpu-small``, the first cpu recipe, within 2 hours; ``cpu-distilled``,
cpu-small plus distillation from stored distributions. Seeded and resumable like the rest of the zoo: each stage
reuses what a previous run of the same recipe finished (each recipe keeps its stages in its own folder of the work
directory).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..errors import InvalidArgumentError
from ..files import atomic_write_text, publish_dir
from ..training.cod import CODConfig
from ..training.config import DISTILL_FROM_DATA, FEATURES_FROM_DATA, DataConfig, TrainConfig
from ..training.rundir import TRAINING_INFO_FILE
from ..training.trainer import train_or_resume
from .build import fast_bf16_available
from .publish import SMOLLM2_DRAFT, check_destination, check_scale
from .recipe import COD_MIN_RETENTION, COD_RETENTION, SEED, other_recipe

BASE = "zoo:smollm2"
NAME = SMOLLM2_DRAFT
MASK_TOKEN = 16  # "<empty_output>": a special token chat answers never contain; reused, so no embedding row is added
# SmolLM2's layers the draft reads (indices into its hidden states; -1: the last, after the final norm; -12: the
# residual stream after layer 18 of 30, context the LM head does not need). Each layer adds a 576 x 576 projection
# (0.66 MB bf16): two keep the committed draft within 25 MB.
FEATURE_LAYERS = (-1, -12)
FEATURE_SCALE = 0.1  # of the standardised features (pard.target_features: the adapter's output near the embeddings')


@dataclass(frozen=True)
class SmolDraftRecipe:
    prompts: int = 3000  # stdlib coding requests
    max_new_tokens: int = 384  # longest regenerated answer
    regenerate_batch: int = 128
    layers: str = "0-1"  # SmolLM2's decoder layers the draft keeps
    draft_vocab: int = 8192
    num_draft_tokens: int = 8
    max_seq_len: int = 512
    steps: int = 1200  # COD steps
    # > 0: a next-token phase first (K = 1: x_(t+1) from x_t and the target's states; a sixth of a COD step's cost
    # on a CPU), then COD continues from its draft, adapter included
    next_token_steps: int = 0
    batch_size: int = 16
    learning_rate: float = 1e-3
    kd_weight: float = 1.0  # 0: no distillation term
    top_logprobs: int = 0  # > 0: regeneration stores SmolLM2's top-N, and distillation reads them (no teacher forward)
    # A feature draft (pard.target_features): the regeneration keeps SmolLM2's hidden states at these layers and the
    # draft learns to read them (None: a token-only draft, as the drafts before this recipe version)
    feature_layers: tuple[int, ...] | None = FEATURE_LAYERS
    feature_drop: float = 0.1
    feature_scale: float = FEATURE_SCALE


# cpu-small, which the other CPU recipes vary (below)
CPU_SMALL = SmolDraftRecipe(prompts=640, max_new_tokens=256, regenerate_batch=16, steps=180, kd_weight=0.0)
RECIPES = {
    # A GPU's recipe: what the previous, token-only `zoo:smollm2-pard` was built with on an H100 (12 minutes of
    # answers, 3 of training), plus SmolLM2's features.
    "full": SmolDraftRecipe(),
    # For 2 CPU cores (README, "Four times the answers"): what limits a CPU-made draft is answers, and COD's steps
    # are where a CPU step's time goes (each sequence gains up to 7 masked copies). So shorter answers (256 tokens,
    # 16 rows, continuous batching), 2,560 stdlib requests (with GSM8K 0-999 as --prompts: 3,560 answers, 88
    # minutes on 2 Sapphire Rapids cores), then 540 cheap next-token steps reading the states (~4 passes: 20
    # minutes) and 180 COD steps from that draft (33 minutes): ~2.4 hours there. No distillation: SmolLM2's
    # forward over each batch would more than double a step, and the labels already are its own greedy tokens.
    # Steps run under bf16 autocast where the CPU has AMX or AVX512-BF16, in fp32 (1.5-2x slower) elsewhere.
    "cpu": replace(CPU_SMALL, prompts=2560, next_token_steps=540),
    # The first cpu recipe, within 2 hours: 640 requests (896 answers with GSM8K 0-255), COD only, 180 steps (81
    # minutes on 2 Zen 3 cores, ~40 on 2 Sapphire Rapids). A weaker draft (README); the earlier tables measure it.
    "cpu-small": CPU_SMALL,
    # cpu-small plus distillation from the top-16 SmolLM2 stored while it wrote the answers (no teacher forward: a
    # step costs 17.0 s instead of 16.7). Measured no better in 1-α than cpu-small (README); kept so that the
    # measurement can be repeated.
    "cpu-distilled": replace(CPU_SMALL, kd_weight=1.0, top_logprobs=16),
}


def choose_recipe(name: str, device: torch.device) -> str:
    """``auto``: the full recipe where there is a GPU, the 2-hour CPU recipe otherwise."""
    if name == "auto":
        return "full" if device.type == "cuda" else "cpu"
    if name not in RECIPES:
        raise InvalidArgumentError(f"unknown recipe {name!r}; choose auto, {', '.join(RECIPES)}")
    return name


def prompt_records(path: Path, count: int, extra: list[str]) -> Path:
    """The chat prompts as ``{"id", "messages"}`` JSON lines (stdlib requests, then each ``extra`` file's)."""
    from ..bench.datasets import load_prompts
    from ..corpus import stdlib_chat_prompts

    if path.exists():
        return path
    records = stdlib_chat_prompts("train", count)
    for spec in extra:
        records += [{"id": f"{spec}:{p.id}", "messages": [{"role": "user", "content": p.text},
                                                           {"role": "assistant", "content": ""}]}
                    for p in load_prompts(spec)]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


DATA_FIELDS = ("prompts", "max_new_tokens", "top_logprobs", "feature_layers")  # what the regenerated data depends on


def _claim(record: Path, wanted: dict) -> None:
    """A stage's work is reused only by the recipe that made it (``record`` says which one did)."""
    if other_recipe(record, wanted) is not None:
        raise InvalidArgumentError(f"{record.parent} holds a stage built with another recipe ({record}); remove "
                                   "it or pass another --work-dir")
    atomic_write_text(record, json.dumps(wanted, indent=2) + "\n")


def regenerate_answers(work_dir: Path, recipe: SmolDraftRecipe, scale: float, prompts: list[str], device) -> Path:
    """Stage 1-2: the prompts and SmolLM2's greedy fp32 answers (resumable); returns the answers file."""
    from ..regenerate import RegenerateConfig, regenerate

    folder = work_dir / "smollm2-data"
    folder.mkdir(parents=True, exist_ok=True)
    recipe_fields = {k: v for k, v in asdict(recipe).items() if k in DATA_FIELDS}
    _claim(folder / "recipe.json", {**recipe_fields, "scale": scale, "extra_prompts": prompts})
    count = max(2, math.ceil(recipe.prompts * scale))
    source = prompt_records(folder / "prompts.jsonl", count, prompts)
    answers, info = folder / "answers.jsonl", folder / "regeneration.json"
    if not info.exists():
        print(f"[zoo] {BASE} answers the chat prompts on {device} (greedy, fp32)", flush=True)
        t0 = time.perf_counter()
        regenerate(RegenerateConfig(target=BASE, data=[str(source)], output=str(answers),
                                    batch_size=recipe.regenerate_batch, max_new_tokens=recipe.max_new_tokens,
                                    seed=SEED, dtype="float32", device=str(device),
                                    top_logprobs=recipe.top_logprobs,
                                    store_features=list(recipe.feature_layers) if recipe.feature_layers else None))
        atomic_write_text(info, json.dumps({"records": sum(1 for _ in answers.open()), "device": str(device),
                                            "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    return answers


def train_draft(run_dir: Path, answers: Path, recipe: SmolDraftRecipe, scale: float, device,
                progress: bool = True) -> list[Path]:
    """Stage 3: slice, reduce the head, train (a next-token phase if the recipe has one, then COD + distillation;
    each phase resumable); returns the phases' run directories, the draft's (``run_dir``) last."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    _claim(run_dir.parent / f"{run_dir.name}.recipe.json", {"recipe": asdict(recipe), "scale": scale})
    phases = []
    if recipe.next_token_steps:
        phases.append(_train_phase(run_dir.parent / f"{run_dir.name}-next-token", BASE, answers, 1,
                                   recipe.next_token_steps, recipe, scale, device, progress))
    phases.append(_train_phase(run_dir, phases[-1] if phases else BASE, answers, recipe.num_draft_tokens,
                               recipe.steps, recipe, scale, device, progress))
    return phases


def _train_phase(run_dir: Path, model, answers: Path, num_draft_tokens: int, steps: int, recipe: SmolDraftRecipe,
                 scale: float, device, progress: bool) -> Path:
    """One ``pard train`` run of the recipe, from SmolLM2 (the slice and the reduced head are cut here) or from the
    previous phase's draft (already cut; a feature draft keeps its adapter: pard.training.trainer)."""
    steps = max(1, math.ceil(steps * scale))
    cut = model == BASE
    train_or_resume(TrainConfig(
        model=str(model), data=[str(answers)], output=str(run_dir),
        cod=CODConfig(num_draft_tokens, COD_RETENTION, COD_MIN_RETENTION),
        data_config=DataConfig(max_seq_len=recipe.max_seq_len, assistant_only=True),
        max_steps=steps, learning_rate=recipe.learning_rate, warmup_ratio=0.03, weight_decay=0.01,
        batch_size=recipe.batch_size, seed=SEED, save_steps=max(50, steps // 4), save_total_limit=1,
        logging_steps=max(1, min(25, steps // 10)), mask_token_ids=[MASK_TOKEN] if num_draft_tokens > 1 else None,
        slice_layers=recipe.layers if cut else None, draft_vocab=recipe.draft_vocab if cut else 0,
        freeze_embeddings=True, distill_from=_teacher(recipe), kd_weight=recipe.kd_weight,
        target_features=FEATURES_FROM_DATA if recipe.feature_layers else None, feature_drop=recipe.feature_drop,
        feature_scale=recipe.feature_scale,
        bf16=fast_bf16_available(device), device=str(device), disable_progress=not progress,
    ))
    return run_dir


def _teacher(recipe: SmolDraftRecipe) -> str | None:
    """Where the distillation term's distributions come from: none, the answers' stored top-N, or SmolLM2."""
    if not recipe.kd_weight:
        return None
    return DISTILL_FROM_DATA if recipe.top_logprobs else BASE


def build_smollm2_draft(output: Path, work_dir: Path, *, scale: float = 1.0, device: str = "auto",
                        prompts: list[str] | None = None, recipe: str = "auto", progress: bool = True,
                        replace_shipped: bool = False) -> dict:
    """Run (or resume) every stage of recipe ``recipe`` (a name in RECIPES, or ``auto``); publish the draft as
    ``output / NAME``; return its build record. Refused before any stage runs: the package's own zoo as ``output``
    without ``replace_shipped``, and replacing a draft another recipe or a larger scale built."""
    from ..models import resolve_device

    started = time.perf_counter()
    dev = resolve_device(device)
    name = choose_recipe(recipe, dev)
    chosen = RECIPES[name]
    check_destination(output, replace_shipped)
    check_replaceable(output / NAME, name, scale)
    stages = work_dir / f"{NAME}-{name}"  # each recipe resumes its own stages
    answers = regenerate_answers(stages, chosen, scale, list(prompts or []), dev)
    run_dirs = train_draft(stages / NAME, answers, chosen, scale, dev, progress)  # the draft's last
    phases = [json.loads((d / TRAINING_INFO_FILE).read_text()) for d in run_dirs]
    info = {"recipe_name": name, "recipe": asdict(chosen), "scale": scale, "extra_prompts": list(prompts or []),
            "device": str(dev), "steps": sum(p["steps"] for p in phases),
            "train_seconds": round(sum(p["train_seconds"] for p in phases), 2),
            "data": json.loads((answers.parent / "regeneration.json").read_text()),
            "build_seconds": round(time.perf_counter() - started, 1)}
    pack(run_dirs[-1], output / NAME, info)
    return info


def check_replaceable(dest: Path, recipe_name: str, scale: float = 1.0) -> None:
    """Refuse, before hours of work, to publish over a draft another recipe or a larger scale built (the committed
    draft included: a CPU build would replace it with a weaker one). Drafts recorded without a recipe name were
    built by ``full``, without a scale at scale 1."""
    build = dest / "build.json"
    if not build.exists():
        return
    record = json.loads(build.read_text())
    built_by = record.get("recipe_name", "full")
    if built_by != recipe_name:
        raise InvalidArgumentError(f"{dest} holds a draft built with the {built_by} recipe; the {recipe_name} "
                                   "recipe would replace it: pass --output DIR to build it elsewhere")
    check_scale(dest, scale, float(record.get("scale", 1.0)))


def pack(run_dir: Path, dest: Path, info: dict) -> None:
    """The trained draft as committed: bf16 weights (without what it takes from its base), config, tokenizer,
    training record and build record; published atomically."""
    from safetensors.torch import load_file, save_file

    with publish_dir(dest, overwrite=True) as staging:
        state = load_file(str(run_dir / "model.safetensors"))
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
                  str(staging / "model.safetensors"), metadata={"format": "pt"})
        # No tokenizer files: the draft names its base (zoo:smollm2), and the tokenizer comes from there too.
        for name in ("config.json", "generation_config.json", TRAINING_INFO_FILE):
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, staging / name)
        atomic_write_text(staging / "build.json", json.dumps(info, indent=2) + "\n")

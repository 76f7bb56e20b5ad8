"""`pard zoo build`: reproduce the embedded family from scratch (seeded), stage by stage.

Stages: tokenizer -> each autoregressive member (draft, small, medium, large) -> regeneration of training text by
the largest target -> the PARD adaptation of the draft on it -> held-out evaluation. A finished stage is skipped
when the build is run again, and an interrupted stage resumes from its last checkpoint (regeneration from its last
record), so an interrupted build loses at most one checkpoint interval. A stage directory made by another recipe
is never reused.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..errors import InvalidArgumentError
from ..files import atomic_write_text, publish_dir
from ..training.cod import CODConfig
from ..training.config import FEATURES_FROM_DATA, DataConfig, TrainConfig
from ..training.data import load_records
from ..training.rundir import TRAINING_INFO_FILE, is_finished
from ..training.trainer import train_or_resume
from .publish import check_destination, check_family_build, check_members
from .recipe import (
    BATCH_SIZE,
    COD_MIN_RETENTION,
    COD_RETENTION,
    EOS,
    FAMILY,
    RESERVED,
    SEED,
    SEQ_LEN,
    TARGETS,
    VOCAB_SIZE,
    ModelRecipe,
    RegenerationRecipe,
    other_recipe,
)

TOKENIZER_DIR = "tokenizer"
TRAIN_DATA, HELDOUT_DATA = "stdlib:train", "stdlib:heldout"  # the corpus: pard.corpus's split of the stdlib
REGENERATION_INFO_FILE = "regeneration.json"


def train_tokenizer(out_dir: Path, corpus: str = TRAIN_DATA) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style pre-tokenization) with VOCAB_SIZE entries on the corpus (stdlib train split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, *RESERVED],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator((r["text"] for r in load_records(corpus)), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    fast.model_max_length = 1024
    fast.save_pretrained(out_dir)
    return fast


def init_model(recipe: ModelRecipe, tokenizer, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=1024,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def grow_depth(model: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """Function-preserving depth growth: ``model`` with decoder layers appended up to ``layers`` in total.

    The new layers are freshly initialized except their residual-branch outputs (attention ``o_proj``, MLP
    ``down_proj``), which are zero: each new layer adds nothing to the residual stream, so the grown model computes
    exactly what ``model`` computes, and training then puts the new depth to use. Why: on 2 CPU cores a bigger model
    trained from scratch sees too few tokens to beat a smaller one (the first family build: 7M and 16M targets lost
    to a 1.3M draft), while a grown model starts where the smaller one ended.
    """
    have = model.config.num_hidden_layers
    if layers < have:
        raise InvalidArgumentError(f"cannot grow a {have}-layer model to {layers} layers")
    config = LlamaConfig(**{**model.config.to_dict(), "num_hidden_layers": layers})
    grown = LlamaForCausalLM(config)
    result = grown.load_state_dict(model.state_dict(), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    with torch.no_grad():
        for layer in grown.model.layers[have:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return grown


def fast_bf16_available(device: torch.device | None = None) -> bool:
    """bf16 autocast pays off on GPUs and on CPUs with AMX / AVX512-BF16 (a 2-layer SmolLM2-width step: 1.5-2x
    faster on 2 Sapphire Rapids cores); elsewhere train in fp32. ``device``: where training runs (None: where it
    would by default)."""
    if device is None or device.type == "cuda":
        if torch.cuda.is_available():
            return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def heldout_chunks(tokenizer, max_chunks: int = 200, corpus: str = HELDOUT_DATA) -> list[list[int]]:
    """The first ``max_chunks`` 256-token chunks of the held-out files (documents end with EOS)."""
    ids = []
    for record in load_records(corpus):
        ids.extend(tokenizer(record["text"])["input_ids"] + [tokenizer.eos_token_id])
    return [ids[i : i + SEQ_LEN] for i in range(0, len(ids) - SEQ_LEN, SEQ_LEN)][:max_chunks]


@torch.inference_mode()
def heldout_loss(model, chunks: list[list[int]]) -> float:
    """Mean next-token NLL (nats/token) of ``model`` on held-out chunks."""
    total, count = 0.0, 0
    for start in range(0, len(chunks), 16):
        batch = torch.tensor(chunks[start : start + 16])
        logits = model(batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total, count = total + nll.item(), count + batch[:, 1:].numel()
    return total / count


def build_zoo(
    output: Path,
    work_dir: Path,
    *,
    scale: float = 1.0,
    only: list[str] | None = None,
    progress: bool = True,
    train_data: str = TRAIN_DATA,
    heldout_data: str = HELDOUT_DATA,
    replace_shipped: bool = False,
) -> dict:
    """Build the family into ``output`` (bf16 safetensors + tokenizer per member, and family.json).

    ``scale`` multiplies every training-step count, and ``train_data`` / ``heldout_data`` replace the stdlib
    corpus (tests build at a tiny scale on a few files to exercise the whole pipeline in seconds). Refused before
    any stage runs: unknown ``only`` members, the package's own zoo as ``output`` without ``replace_shipped``, and
    replacing a member built at a larger scale.
    """
    check_members(only)
    check_destination(output, replace_shipped)
    names = [n for n in FAMILY if only is None or n in only]
    check_family_build(output, names, scale)
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = work_dir / TOKENIZER_DIR
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    else:
        print(f"[zoo] training the tokenizer on {train_data}", flush=True)
        tokenizer = train_tokenizer(tok_dir, train_data)
    bf16 = fast_bf16_available()
    for index, name in enumerate(names, start=1):
        recipe = FAMILY[name]
        steps = max(1, math.ceil(recipe.steps * scale))
        run_dir, init_dir, data_dir = (work_dir / f"{name}{suffix}" for suffix in ("", "-init", "-data"))
        _check_recipe(work_dir / f"{name}.recipe.json", (run_dir, init_dir, data_dir), recipe, scale, train_data)
        data = [train_data]
        if recipe.regenerated is not None:
            data = [str(_regenerate(recipe.regenerated, output, data_dir, tokenizer, scale, train_data,
                                    recipe.target_features))]
        if not is_finished(run_dir):
            if recipe.base is not None and recipe.layers == FAMILY[recipe.base].layers:
                # same architecture: adapt the base member as it is (its run, or the member published in output
                # when this work dir has no run of it: e.g. a new member added to a built family)
                start_dir = work_dir / recipe.base
                if not is_finished(start_dir) and (output / recipe.base / "config.json").exists():
                    start_dir = output / recipe.base
            else:  # from scratch, or a deeper model that starts as the base member's function
                start_dir = init_dir
                if not (start_dir / "config.json").exists():
                    _initial_model(recipe, work_dir, tokenizer).save_pretrained(start_dir)
                    tokenizer.save_pretrained(start_dir)
            params = sum(p.numel() for p in init_model(recipe, tokenizer, SEED).parameters()) / 1e6
            print(f"[zoo {index}/{len(names)}] {name}: {params:.1f}M parameters, {steps} steps, "
                  f"K_train={recipe.num_draft_tokens}, {'bf16' if bf16 else 'fp32'}", flush=True)
            config = TrainConfig(
                model=str(start_dir),
                data=data,
                output=str(run_dir),
                cod=CODConfig(recipe.num_draft_tokens, COD_RETENTION, COD_MIN_RETENTION),
                data_config=DataConfig(max_seq_len=SEQ_LEN),
                max_steps=steps,
                learning_rate=recipe.learning_rate,
                warmup_ratio=0.03,
                weight_decay=0.01,
                batch_size=BATCH_SIZE,
                seed=SEED,
                save_steps=max(50, steps // 4),
                save_total_limit=1,
                logging_steps=max(1, min(25, steps // 10)),
                bf16=bf16,
                disable_progress=not progress,
                target_features=FEATURES_FROM_DATA if recipe.target_features else None,
                feature_drop=recipe.feature_drop,
            )
            train_or_resume(config)
        _export_member(run_dir, output / name)
        if recipe.regenerated is not None:
            shutil.copy(data_dir / REGENERATION_INFO_FILE, output / name / REGENERATION_INFO_FILE)
    family = _evaluate(output, tokenizer, names, time.perf_counter() - started, scale, heldout_data)
    return family


def _initial_model(recipe: ModelRecipe, work_dir: Path, tokenizer) -> LlamaForCausalLM:
    """A fresh model, or the trained base member grown to the recipe's depth."""
    if recipe.base is None:
        return init_model(recipe, tokenizer, SEED)
    from ..models import load_model

    torch.manual_seed(SEED)  # the new layers' initialization
    return grow_depth(load_model(str(work_dir / recipe.base), dtype="float32", device="cpu"), recipe.layers)


def _check_recipe(record: Path, stage_dirs: tuple[Path, ...], recipe: ModelRecipe, scale: float,
                  train_data: str = TRAIN_DATA) -> None:
    """A stage's work dirs are reused only by the recipe that made them (``record`` says which one did)."""
    wanted = {"recipe": asdict(recipe), "scale": scale}
    if train_data != TRAIN_DATA:
        wanted["train_data"] = train_data
    found = other_recipe(record, wanted)
    if found is not None:
        raise InvalidArgumentError(f"{stage_dirs[0]} was built with another recipe ({found}); remove "
                                   f"{stage_dirs[0]}* or pass another --work-dir")
    if record.exists():
        return
    stale = [d for d in stage_dirs if d.exists()]
    if stale:
        raise InvalidArgumentError(f"{stale[0]} has no record of the recipe that made it; remove {stage_dirs[0]}* "
                                   "or pass another --work-dir")
    record.write_text(json.dumps(wanted, indent=2) + "\n")


def _regenerate(regen: RegenerationRecipe, output: Path, data_dir: Path, tokenizer, scale: float,
                train_data: str, store_features: tuple[int, ...] | None = None) -> Path:
    """Let the (already built) teacher rewrite corpus windows; greedy, batched AR, resumable (appends records);
    with ``store_features``, keeping its hidden states at those layers beside the records."""
    from ..regenerate import RegenerateConfig, corpus_windows, regenerate

    windows = max(2, math.ceil(regen.windows * scale))
    source = corpus_windows(train_data, tokenizer, windows, SEQ_LEN, data_dir / "windows.jsonl")
    target = data_dir / f"regenerated-by-{regen.teacher}.jsonl"
    info_file = data_dir / REGENERATION_INFO_FILE
    if not info_file.exists():
        print(f"[zoo] zoo:{regen.teacher} regenerates {windows} corpus windows (keeps {regen.prefix_tokens} tokens, "
              f"writes {SEQ_LEN - regen.prefix_tokens})", flush=True)
        started = time.perf_counter()
        regenerate(RegenerateConfig(
            target=str(output / regen.teacher), data=[str(source)], output=str(target),
            max_new_tokens=SEQ_LEN - regen.prefix_tokens, prefix_tokens=regen.prefix_tokens,
            batch_size=regen.batch_size, seed=SEED, dtype="float32", device="cpu",
            store_features=list(store_features) if store_features else None,
        ))
        info = {**asdict(regen), "windows": windows, "seconds": round(time.perf_counter() - started, 2)}
        info_file.write_text(json.dumps(info, indent=2) + "\n")
    return target


def _export_member(run_dir: Path, dest: Path) -> None:
    """Final weights as bf16 safetensors + config + tokenizer + training record (no checkpoints, no pickles),
    replacing ``dest`` as a whole (an interrupted export leaves the previous member)."""
    from ..models import load_model

    model = load_model(str(run_dir), dtype="float32", device="cpu").to(torch.bfloat16)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
    tokenizer.init_kwargs.pop("local_files_only", None)  # how this build loaded it, not a property of the model
    with publish_dir(dest, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.copy(run_dir / TRAINING_INFO_FILE, staging / TRAINING_INFO_FILE)


def _evaluate(output: Path, tokenizer, names: list[str], seconds: float, scale: float, heldout_data: str) -> dict:
    from ..mask_tokens import PARD_TOKEN_KEY
    from ..models import load_model

    # A scaled-down build is a smoke test of the pipeline: it is evaluated on proportionally fewer chunks.
    chunks = heldout_chunks(tokenizer, max_chunks=max(4, math.ceil(200 * min(scale, 1.0))), corpus=heldout_data)
    members = {}
    for name in names:
        info = json.loads((output / name / TRAINING_INFO_FILE).read_text())
        model = load_model(str(output / name), dtype="float32", device="cpu")
        members[name] = {
            "scale": scale,
            "parameters": sum(p.numel() for p in model.parameters()),
            "num_draft_tokens": FAMILY[name].num_draft_tokens,
            "pard_token": getattr(model.config, PARD_TOKEN_KEY, None),
            "steps": info["steps"],
            "train_seconds": info["train_seconds"],
            "heldout_loss": round(heldout_loss(model, chunks), 4),
        }
        regeneration = output / name / REGENERATION_INFO_FILE
        if regeneration.exists():
            members[name]["data_seconds"] = json.loads(regeneration.read_text())["seconds"]
    family_file = output / "family.json"
    previous = json.loads(family_file.read_text()) if family_file.exists() else {}
    family = {
        "corpus": "Python stdlib source (pard.corpus, train split; held-out split for evaluation)",
        "vocab_size": VOCAB_SIZE,
        "seq_len": SEQ_LEN,
        "batch_size": BATCH_SIZE,
        "seed": SEED,
        "scale": scale,
        "build_seconds": round(seconds, 1),  # this invocation (stages already built were skipped)
        "members": {**previous.get("members", {}), **members},
        "targets": list(TARGETS),
    }
    # What the whole recipe costs, however many invocations built it: every stage's training and data time.
    family["stage_seconds"] = round(sum(m["train_seconds"] + m.get("data_seconds", 0.0)
                                        for m in family["members"].values()), 1)
    atomic_write_text(family_file, json.dumps(family, indent=2) + "\n")
    return family

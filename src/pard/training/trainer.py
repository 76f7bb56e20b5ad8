"""`pard train`: adapt a small autoregressive LM into a PARD draft on the Hugging Face Trainer.

Multi-GPU / multi-node runs work the usual way (``accelerate launch`` or ``torchrun``, DeepSpeed/FSDP configs
through ``--deepspeed``/accelerate) because all distribution is the Trainer's.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AddedToken, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..errors import InvalidArgumentError
from ..models import PARD_TOKEN_KEY, check_tokenizers, load_model, load_tokenizer, resolve_device
from .cod import IGNORE_INDEX, CODConfig, build_cod_sample
from .collator import CODCollator
from .data import DataConfig, load_training_sequences
from .loss import kd_loss, pard_loss, teacher_distributions

ADDED_MASK_TOKEN = "<|pard_mask|>"
TRAINING_INFO_FILE = "pard_training.json"


@dataclass
class TrainConfig:
    """Everything `pard train` needs (each field is one CLI option)."""

    model: str = field(metadata={"help": "the autoregressive draft to adapt: hub id, local dir or tiny:NAME"})
    data: list[str] = field(metadata={"help": "data files (json/jsonl/parquet/txt), stdlib[:split] or hub names"})
    output: str = field(metadata={"help": "output directory (checkpoints go inside it)"})
    cod: CODConfig = field(default_factory=CODConfig)
    data_config: DataConfig = field(default_factory=DataConfig)
    epochs: float = field(default=1.0, metadata={"help": "training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (overrides epochs)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW, cosine decay)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of steps of linear warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=8, metadata={"help": "sequences per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    mask_token_ids: list[int] | None = field(
        default=None, metadata={"help": "reuse these token ids as mask tokens (one shared id, or one per depth)"}
    )
    add_mask_token: bool = field(default=False, metadata={"help": "add a new special mask token and resize"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and COD drop patterns"})
    save_steps: int = field(default=500, metadata={"help": "write a checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "keep this many checkpoints"})
    logging_steps: int = field(default=10, metadata={"help": "log loss and tokens/s every N steps"})
    resume: bool = field(default=False, metadata={"help": "continue from the last complete checkpoint"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs that support it)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    deepspeed: str | None = field(default=None, metadata={"help": "a DeepSpeed config file"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub"})
    report_to: str = field(default="none", metadata={"help": "tensorboard, wandb, ... (none by default)"})
    disable_progress: bool = field(default=False, metadata={"help": "no progress bar (logs only)"})
    distill_from: str | None = field(
        default=None, metadata={"help": "add a KL term towards this target's distributions (token-level alignment)"}
    )
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the distillation term"})
    kd_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the distillation term"})


class CODDataset(torch.utils.data.Dataset):
    """Token chunks -> COD samples, built on the fly. The drop pattern of chunk i in epoch e comes from a
    generator seeded with (seed, e, i): random per sample and epoch, identical when a run resumes."""

    def __init__(self, chunks, cod: CODConfig, mask_token_ids: list[int], seed: int):
        self.chunks, self.cod, self.mask_token_ids, self.seed = chunks, cod, mask_token_ids, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's dataloader at each epoch
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int):
        chunk = self.chunks[int(index)]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return build_cod_sample(chunk["input_ids"], self.cod, self.mask_token_ids, rng, chunk["trainable"])


class PardTrainer(Trainer):
    """The Trainer with the PARD loss (+ distillation from a frozen ``teacher``), counting the packed tokens it
    processes (padding included: what the compute is spent on)."""

    def __init__(self, *args, teacher=None, kd_weight: float = 1.0, kd_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean; let the Trainer scale for GA
        self.tokens_seen = 0
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False) if teacher is not None else None
        self.kd_weight, self.kd_temperature = kd_weight, kd_temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        teacher_ids = inputs.pop("teacher_input_ids", None)
        self.tokens_seen += int(labels.numel())
        outputs = model(**inputs, use_cache=False)
        loss = pard_loss(outputs.logits, labels)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=teacher_ids, use_cache=False).logits  # (B, N, V_t)
            target = teacher_distributions(teacher_logits, inputs["position_ids"], outputs.logits.shape[-1])
            loss = loss + self.kd_weight * kd_loss(outputs.logits, target, labels != IGNORE_INDEX,
                                                   self.kd_temperature)
        return (loss, outputs) if return_outputs else loss


class ThroughputProgress(ProgressCallback):
    """The Trainer's progress bar, with loss and tokens/s as its postfix instead of printed dicts."""

    def __init__(self, trainer: PardTrainer):
        super().__init__()
        self.trainer = trainer
        self.last = (time.perf_counter(), 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), self.trainer.tokens_seen * args.world_size
        rate = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, tokens)
        self.training_bar.set_postfix({"loss": f"{logs['loss']:.3f}", "tok/s": f"{rate:,.0f}"}, refresh=False)
        logs["tokens_per_second"] = rate


def resolve_mask_token(model, tokenizer, mask_token_ids: list[int] | None, add: bool) -> list[int]:
    """Pick the mask token id(s), adding a token only when asked or when nothing can be reused.

    Order: explicit ids; ``--add-mask-token``; else an unused embedding row past the tokenizer's vocabulary (how the
    official Qwen2.5 drafts use 151665); else the tokenizer's own mask token; else a reserved special token
    (``<|reserved_special_token_*|>`` as in Llama-3); else a new special token.
    """
    rows = model.get_input_embeddings().num_embeddings
    if mask_token_ids:
        bad = [i for i in mask_token_ids if not 0 <= i < rows]
        if bad:
            raise InvalidArgumentError(f"mask token id(s) {bad} outside the model's embedding table (size {rows})")
        return list(mask_token_ids)
    if not add:
        if rows > len(tokenizer):
            return [len(tokenizer)]
        if getattr(tokenizer, "mask_token_id", None) is not None and tokenizer.mask_token_id < rows:
            return [tokenizer.mask_token_id]
        reserved = sorted(i for tok, i in tokenizer.get_vocab().items() if "reserved" in tok and i < rows)
        if reserved:
            return [reserved[-1]]
    tokenizer.add_tokens([AddedToken(ADDED_MASK_TOKEN, special=True, normalized=False)], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return [tokenizer.convert_tokens_to_ids(ADDED_MASK_TOKEN)]


def last_complete_checkpoint(output: str | Path) -> str | None:
    """The newest ``checkpoint-N`` whose trainer_state.json (the Trainer writes it after everything else) exists
    and parses: a checkpoint half-written when a run crashed is skipped, and the previous one is used."""
    output = Path(output)
    if not output.is_dir():
        return None
    steps = []
    for path in output.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        try:
            step = int(path.name.rsplit("-", 1)[1])
            json.loads((path / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        steps.append((step, path))
    return str(max(steps)[1]) if steps else None


def train(config: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train, save the PARD draft into ``config.output``, and return that path."""
    output = Path(config.output)
    resume_from = last_complete_checkpoint(output) if config.resume else None
    if not config.resume and any(output.glob(f"{PREFIX_CHECKPOINT_DIR}-*")):
        raise InvalidArgumentError(
            f"{output} already holds checkpoints; pass --resume to continue that run, or choose another --output"
        )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_model(config.model, dtype=torch.float32, device="cpu", trust_remote_code=config.trust_remote_code)
    model.config._attn_implementation = config.attn_implementation
    model.train()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # K = 1 is ordinary next-token training (no mask tokens, and the result stays an autoregressive model).
    parallel = config.cod.num_draft_tokens > 1
    mask_ids = resolve_mask_token(model, tokenizer, config.mask_token_ids, config.add_mask_token) if parallel else []
    chunks = load_training_sequences(config.data, tokenizer, config.data_config, config.cod.num_draft_tokens)
    dataset = CODDataset(chunks, config.cod, mask_ids, config.seed)

    args = TrainingArguments(
        output_dir=str(output),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        use_cpu=device.type == "cpu",
        ddp_backend="gloo" if device.type == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        deepspeed=config.deepspeed,
        remove_unused_columns=False,
        dataloader_num_workers=0,  # COD patterns depend on the epoch, which workers would not see
        report_to=config.report_to,
        disable_tqdm=config.disable_progress,
    )  # checkpoints and the final model are safetensors (the only format transformers 5 writes)
    teacher = None
    if config.distill_from:
        check_tokenizers(load_tokenizer(config.distill_from, trust_remote_code=config.trust_remote_code), tokenizer)
        teacher = load_model(config.distill_from, dtype="bfloat16" if config.bf16 else torch.float32, device="cpu",
                             trust_remote_code=config.trust_remote_code)
    collator = CODCollator(
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        attn_implementation=config.attn_implementation,
        with_source=teacher is not None,
    )
    trainer = PardTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks,
        teacher=teacher, kd_weight=config.kd_weight, kd_temperature=config.kd_temperature,
    )
    if not config.disable_progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ThroughputProgress(trainer))
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started

    model = trainer.model
    model.config.use_cache = True  # the Trainer turns the KV cache off for training; the saved draft decodes
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    if parallel:
        setattr(model.config, PARD_TOKEN_KEY, mask_ids[0] if len(mask_ids) == 1 else mask_ids)
        model.config.spd_type = "pard"
    trainer.save_model(str(output))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output)
        info = training_info(config, mask_ids, trainer, result, seconds, len(dataset))
        (output / TRAINING_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return output


def training_info(config: TrainConfig, mask_ids, trainer: PardTrainer, result, seconds: float, chunks: int) -> dict:
    """What the model card and `pard export` record about how a draft was made."""
    history = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "base_model": config.model,
        "data": list(config.data),
        "num_draft_tokens": config.cod.num_draft_tokens,
        "retention": config.cod.retention,
        "min_retention": config.cod.min_retention,
        "mask_token_ids": mask_ids,
        "max_seq_len": config.data_config.max_seq_len,
        "assistant_only": config.data_config.assistant_only,
        "epochs": config.epochs,
        "steps": trainer.state.global_step,
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size * config.grad_accum * trainer.args.world_size,
        "seed": config.seed,
        "training_sequences": chunks,
        "packed_tokens": trainer.tokens_seen * trainer.args.world_size,
        "train_seconds": round(seconds, 2),
        "final_loss": history[-1] if history else None,
        "distill_from": config.distill_from,
        "kd_weight": config.kd_weight if config.distill_from else None,
        "train_loss": result.training_loss if math.isfinite(result.training_loss) else None,
        "config": {k: v for k, v in asdict(config).items() if k not in {"cod", "data_config"}},
    }

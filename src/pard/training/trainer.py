"""`pard train`: adapt a small autoregressive LM into a PARD draft on the Hugging Face Trainer.

Multi-GPU / multi-node runs work the usual way (``accelerate launch`` or ``torchrun``, DeepSpeed/FSDP configs
through ``--deepspeed``/accelerate) because all distribution is the Trainer's.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from ..base_weights import base_reference, check_base, drop_base_tensors
from ..draft_vocab import attach_subset_head, most_frequent_tokens, subset_head_of
from ..errors import DataError
from ..feature_store import open_feature_stores
from ..files import apply_umask, atomic_write_text
from ..mask_tokens import choose_mask_token, mark_parallel_draft
from ..models import base_of, load_model, load_tokenizer, resolve_device
from ..slicing import parse_layers, slice_layers
from ..target_features import (
    STANDARD,
    adapter_of,
    attach_adapter,
    feature_record,
    features_read,
    select_layers,
    target_record,
)
from ..vocab import check_tokenizers
from .cod import IGNORE_INDEX, CODConfig, build_cod_sample
from .collator import CODCollator
from .config import DISTILL_FROM_DATA, FEATURES_FROM_DATA, TrainConfig
from .data import TARGET_FEATURE, load_training_sequences
from .loss import cat_weights, draft_columns, kd_loss, pard_loss, stored_kd_loss, teacher_distributions
from .rundir import (
    CHECKPOINT_PREFIX,
    PROGRESS_FILE,
    TRAINING_INFO_FILE,
    check_run_dir,
    claim_run_dir,
    is_finished,
    last_complete_checkpoint,
    read_progress,
)
from .sampler import LengthGroupedSampler
from .stored_teacher import coverage, gather_rows, gold_logprobs


class CODDataset(torch.utils.data.Dataset):
    """Token chunks -> COD samples, built on the fly. The drop pattern of chunk i in epoch e comes from a
    generator seeded with (seed, e, i): random per sample and epoch, identical when a run resumes. With
    ``teacher_width`` n, chunks carry the target's stored distributions and each sample gets its labels' rows."""

    def __init__(self, chunks, cod: CODConfig, mask_token_ids: list[int], seed: int, teacher_width: int = 0,
                 features: str | None = None, feature_drop: float = 0.0, cat_weighting: bool = False):
        self.chunks, self.cod, self.mask_token_ids, self.seed = chunks, cod, mask_token_ids, seed
        self.teacher_width = teacher_width
        self.cat_weighting = cat_weighting
        self.features, self.feature_drop = features, feature_drop  # "stored", "target" or None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by :class:`EpochSync` at each epoch, resumed ones included
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.chunks)

    def lengths(self) -> list[float]:
        """Each sample's expected packed length (Eq. 11, counting only positions with a trainable label)."""
        return [self.cod.expected_tokens(len(c["input_ids"]), c["trainable"]) for c in self.chunks]

    def __getitem__(self, index: int):
        chunk = self.chunks[int(index)]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        sample = build_cod_sample(chunk["input_ids"], self.cod, self.mask_token_ids, rng, chunk["trainable"])
        if self.teacher_width:  # position p predicts x_{p+1}: the target's row of token p + 1
            sample.teacher_ids, sample.teacher_logprobs = gather_rows(chunk, sample.position_ids + 1,
                                                                      self.teacher_width)
        if self.cat_weighting:
            sample.loss_weights = cat_weights(gold_logprobs(chunk), sample.anchors, sample.depths)
        if self.features:
            # Each position reads its anchor's feature, h_{anchor - 1}: the stored row of the anchor token, or the
            # anchor's predecessor in the chunk's own target pass. A dropped sample sees none (its own generator,
            # so the COD pattern stays what it was).
            if self.features == "stored":
                sample.feature_rows = np.asarray(chunk[TARGET_FEATURE], dtype=np.int64)[sample.anchors]
            else:
                sample.feature_rows = sample.anchors - 1
            if np.random.default_rng([self.seed, self.epoch, int(index), 1]).random() < self.feature_drop:
                sample.feature_rows = np.full_like(sample.feature_rows, -1)
        return sample


class EpochSync(TrainerCallback):
    """Tell the dataset which epoch is starting, from the Trainer's own state.

    Why not accelerate's ``set_epoch``: it reaches the dataset only on some sampler paths, and not at all through
    the loader that skips the finished batches of a resumed epoch — so the rest of that epoch drew COD patterns
    for the wrong epoch and a resumed run diverged from an uninterrupted one. ``state.epoch`` is restored from the
    checkpoint (``steps / steps_per_epoch``), so its integer part is the epoch in both cases.
    """

    def __init__(self, dataset: CODDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int((state.epoch or 0.0) + 1e-9))


class PardTrainer(Trainer):
    """The Trainer with the PARD loss (+ distillation from a frozen ``teacher``), counting the packed tokens it
    processes (padding included: what the compute is spent on) and the training seconds, across resumes: each
    checkpoint carries both in ``pard_progress.json``."""

    def __init__(self, *args, teacher=None, kd_weight: float = 1.0, kd_temperature: float = 1.0,
                 progress: dict | None = None, group_by_length: bool = True, feature_target=None,
                 feature_layers: tuple[int, ...] = (), ce_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.model_accepts_loss_kwargs = False  # our loss is a per-micro-batch mean; let the Trainer scale for GA
        progress = progress or {}
        self.tokens_seen = int(progress.get("packed_tokens_per_process", 0))
        self.seconds_before = float(progress.get("train_seconds", 0.0))
        self.segments = list(progress.get("segments", []))  # closed (from_step, to_step) spans of earlier runs
        self.segment_start = self.segments[-1]["to_step"] if self.segments else 0
        self.started = time.perf_counter()
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False) if teacher is not None else None
        self.kd_weight, self.kd_temperature, self.ce_weight = kd_weight, kd_temperature, ce_weight
        self.feature_target = (feature_target.to(self.args.device).eval().requires_grad_(False)
                               if feature_target is not None else None)
        self.feature_layers = feature_layers

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(dataset.lengths(), self._train_batch_size, seed, lambda: dataset.epoch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")  # (B, L)
        teacher_ids = inputs.pop("teacher_input_ids", None)
        weights = inputs.pop("loss_weights", None)  # (B, L): CAT weighting, or None
        features = self._target_features(inputs, teacher_ids)
        if features is not None:  # a feature draft: token embedding + scale * W n(f) (its adapter)
            embeddings = self.model.get_input_embeddings()(inputs.pop("input_ids"))
            inputs["inputs_embeds"] = embeddings + adapter_of(self.model)(features).to(embeddings.dtype)
        stored_ids, stored_logprobs = inputs.pop("teacher_ids", None), inputs.pop("teacher_logprobs", None)
        self.tokens_seen += int(labels.numel())
        head, subset = self.model.get_output_embeddings(), subset_head_of(self.model)
        if subset is not None:  # the loss is a softmax over the draft's N tokens: labels mapped into the subset
            labels = subset.to_subset(labels, IGNORE_INDEX)
        trained = labels != IGNORE_INDEX  # (B, L): the M positions the loss reads
        # Not under nn.DataParallel (GPUs of one process), which splits the batch but not the mask
        fast = self.args.n_gpu <= 1 and head is not None
        with scores_only(head, trained) if fast else nullcontext():
            outputs = model(**inputs, use_cache=False)
        logits = outputs.logits if fast else outputs.logits[trained]  # (M, V), or (M, N) with a reduced head
        weights = weights[trained] if weights is not None else None  # (M,)
        loss = self.ce_weight * pard_loss(logits, labels[trained], weights)
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=teacher_ids, use_cache=False).logits  # (B, N_x, V_t)
                vocab, columns = (logits.shape[-1], None) if subset is None else (subset.vocab_size, subset.token_ids)
                teacher_logits = draft_columns(teacher_logits, vocab, columns)
                target = teacher_distributions(teacher_logits, inputs["position_ids"], trained)  # like logits
            loss = loss + self.kd_weight * kd_loss(logits, target, temperature=self.kd_temperature)
        if stored_ids is not None:  # the target's top-n stored in the data: (M, n) at the trained positions
            top_ids = stored_ids[trained] if subset is None else subset.to_subset(stored_ids[trained], -1)
            loss = loss + self.kd_weight * stored_kd_loss(logits, top_ids, stored_logprobs[trained],
                                                          self.kd_temperature, weights)
        return (loss, outputs) if return_outputs else loss

    def _target_features(self, inputs, source_ids) -> torch.Tensor | None:
        """The batch's target features (B, L, F): read from the stored ones by the collator, or gathered from a
        target pass over the real sequences (B, N) at each position's feature position (-1: none, zeros)."""
        features = inputs.pop("target_features", None)
        positions = inputs.pop("feature_positions", None)
        if positions is None:
            return features
        with torch.no_grad():
            states = self.feature_target(input_ids=source_ids, output_hidden_states=True, use_cache=False)
            hidden = select_layers(states.hidden_states, self.feature_layers)  # (B, N, F)
        index = positions.clamp(0, hidden.shape[1] - 1)[..., None].expand(-1, -1, hidden.shape[-1])  # (B, L, F)
        return hidden.gather(1, index) * (positions >= 0)[..., None]

    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def all_segments(self) -> list[dict]:
        """One span of optimizer steps per invocation: a resumed run says where it was interrupted."""
        return [*self.segments, {"from_step": self.segment_start, "to_step": self.state.global_step}]

    def _save_checkpoint(self, model, trial):
        # Written before the Trainer's own files: trainer_state.json (written last) vouches for this file too.
        folder = Path(self.args.output_dir) / f"{CHECKPOINT_PREFIX}-{self.state.global_step}"
        if self.is_world_process_zero():
            progress = {"packed_tokens_per_process": self.tokens_seen, "train_seconds": self.train_seconds(),
                        "segments": self.all_segments()}
            atomic_write_text(folder / PROGRESS_FILE, json.dumps(progress) + "\n")
        super()._save_checkpoint(model, trial)


@contextmanager
def scores_only(head: torch.nn.Module, rows: torch.Tensor):
    """While active, the LM ``head`` scores only the hidden states at ``rows`` (B, L) bool, so the model's logits
    are (M, V) for the M True positions, in row-major order. Nothing else reaches the loss, and for a small draft
    the head is a quarter of a training step (its matmuls, the softmax over V and its gradient): padding and
    untrained prompt tokens (a third of a packed batch of chat answers) cost nothing there."""
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][rows], *args[1:]))  # (B, L, H) -> (M, H)
    try:
        yield
    finally:
        handle.remove()


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


def train(config: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train, save the PARD draft into ``config.output``, and return that path.

    Everything that can be checked is checked before the model is loaded: the settings, and the output directory
    (new, empty, or this run's own with ``resume``; writable). A resumed run continues exactly: same data order,
    same COD patterns, and counters (tokens, seconds) that cover the whole run.
    """
    config.validate()
    output = Path(config.output)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        resume_from = check_run_dir(output, config.run_record(), resume=config.resume)
    else:  # under torchrun the first process checks and claims the directory; the others follow it
        resume_from = last_complete_checkpoint(output) if config.resume else None
    if config.resume and resume_from is None and rank0:
        print(f"pard: no complete checkpoint in {output}; starting fresh", file=sys.stderr)
    device = resolve_device(config.device)
    # A sliced draft leaves out the tensors it shares with the model it was cut from and names that model instead:
    # by a name that resolves from anywhere, checked now rather than after the last step. A draft that already
    # borrows them (zoo:smollm2-pard) keeps borrowing them from the same base when it is trained further.
    base = base_reference(config.model) if config.slice_layers is not None else base_of(config.model)
    if base is not None:
        check_base(base)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_model(config.model, dtype=torch.float32, device="cpu", trust_remote_code=config.trust_remote_code)
    if config.slice_layers is not None:
        slice_layers(model, parse_layers(config.slice_layers))
    if config.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    model.config._attn_implementation = config.attn_implementation
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # K = 1 is ordinary next-token training (no mask tokens, and the result stays an autoregressive model).
    parallel = config.cod.num_draft_tokens > 1
    mask_ids = choose_mask_token(model, tokenizer, config.mask_token_ids, config.add_mask_token) if parallel else []
    from_data = config.distill_from == DISTILL_FROM_DATA
    stored_rows = from_data or config.cat_weighting  # the target's top-N stored with the data
    feature_stores = feature_offsets = feature_target = None
    if config.target_features == FEATURES_FROM_DATA:  # the target's states stored with the data
        feature_stores, feature_offsets, record = open_feature_stores(config.data, config.feature_layers)
    elif config.target_features:  # a target forward over every batch
        check_tokenizers(load_tokenizer(config.target_features, trust_remote_code=config.trust_remote_code),
                         tokenizer)
        feature_target = load_model(config.target_features, dtype="bfloat16" if config.bf16 else torch.float32,
                                    device="cpu", trust_remote_code=config.trust_remote_code)
        record = target_record(feature_target, config.feature_layers or [-1], config.target_features)
    chunks = load_training_sequences(config.data, tokenizer, config.data_config, config.cod.num_draft_tokens,
                                     stored_teacher=stored_rows, feature_offsets=feature_offsets)
    if feature_offsets is not None:
        report_feature_coverage(chunks)
    if stored_rows:
        width = stored_teacher_width(chunks)  # refuses data without rows where it trains
    teacher_width = width if from_data else 0
    if config.draft_vocab:  # the N tokens the training text uses most (EOS always: the draft may propose the end)
        trained = ([t for t, m in zip(c["input_ids"], c["trainable"]) if m] for c in chunks)
        keep = most_frequent_tokens(trained, config.draft_vocab,
                                    always=[i for i in (tokenizer.eos_token_id,) if i is not None])
        attach_subset_head(model, keep)
    if config.target_features:
        if reads_target(model, record):  # trained further: its adapter trains on as it is
            print(f"pard: {config.model} already reads layers {record['layers']} of this target: its adapter trains "
                  "on", file=sys.stderr)
        else:  # zero-initialised: training starts from exactly the plain draft
            adapter = attach_adapter(model, {**record, "scale": config.feature_scale, "norm": STANDARD})
            adapter.measure(feature_sample(chunks, feature_stores, feature_target, record["layers"], config.seed))
        if config.adapter_only:  # the draft's own weights stay --model's: its plain mode is --model exactly
            model.requires_grad_(False)
            adapter_of(model).requires_grad_(True)
    model.train()
    dataset = CODDataset(chunks, config.cod, mask_ids, config.seed, teacher_width,
                         features={None: None, FEATURES_FROM_DATA: "stored"}.get(config.target_features, "target"),
                         feature_drop=config.feature_drop, cat_weighting=config.cat_weighting)

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
    if config.distill_from and not from_data:
        check_tokenizers(load_tokenizer(config.distill_from, trust_remote_code=config.trust_remote_code), tokenizer)
        teacher = load_model(config.distill_from, dtype="bfloat16" if config.bf16 else torch.float32, device="cpu",
                             trust_remote_code=config.trust_remote_code)
    collator = CODCollator(
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        attn_implementation=config.attn_implementation,
        with_source=teacher is not None or feature_target is not None,
        feature_store=feature_stores,
    )
    progress = read_progress(resume_from)
    trainer = PardTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator,
        callbacks=[EpochSync(dataset), *(callbacks or [])], teacher=teacher, kd_weight=config.kd_weight,
        kd_temperature=config.kd_temperature, progress=progress, group_by_length=config.group_by_length,
        feature_target=feature_target, feature_layers=tuple(record["layers"]) if config.target_features else (),
        ce_weight=config.ce_weight,
    )

    if not config.disable_progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ThroughputProgress(trainer))
    if rank0:
        claim_run_dir(output, config.run_record())
    trainer.started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = trainer.train_seconds()

    model = trainer.model
    model.config.use_cache = True  # the Trainer turns the KV cache off for training; the saved draft decodes
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    if parallel:
        mark_parallel_draft(model.config, mask_ids)
    trainer.save_model(str(output))
    if trainer.is_world_process_zero():
        if base is not None:  # frozen tensors come from the sliced model at load time
            drop_base_tensors(output, base)
        tokenizer.save_pretrained(output)
        apply_umask(output)  # transformers writes 0600 files; a vLLM server running as another user must read them
        info = training_info(config, mask_ids, trainer, result, seconds, len(dataset))
        atomic_write_text(output / TRAINING_INFO_FILE, json.dumps(info, indent=2) + "\n")  # last: "finished"
    return output


def reads_target(model, record: dict) -> bool:
    """Whether ``model`` already is a feature draft of the target ``record`` describes (same layers, width and
    weights' fingerprint), so that further training keeps its adapter instead of starting a new one."""
    mine = feature_record(model.config) if adapter_of(model) is not None else None
    return mine is not None and features_read(mine) == features_read(record)


def feature_sample(chunks, stores, target, layers, seed: int, count: int = 8192) -> torch.Tensor:
    """(N, F): training features to measure the adapter's standardisation on -- ``count`` of the stored rows the
    chunks read (drawn with ``seed``), or the target's states over the first chunks."""
    if stores is not None:
        rows = np.unique(np.concatenate([np.asarray(c[TARGET_FEATURE], dtype=np.int64) for c in chunks]))
        rows = rows[rows >= 0]
        rows = np.sort(np.random.default_rng(seed).choice(rows, min(count, len(rows)), replace=False))
        return stores.gather(rows)  # (N, F)
    sample, seen = [], 0
    with torch.no_grad():
        for chunk in chunks:
            states = target(input_ids=torch.tensor([chunk["input_ids"]]), output_hidden_states=True, use_cache=False)
            sample.append(select_layers(states.hidden_states, tuple(layers))[0].float())  # (T, F)
            seen += len(sample[-1])
            if seen >= count:
                break
    return torch.cat(sample)[:count]


def stored_teacher_width(chunks) -> int:
    """n of the stored rows, after checking that the data has some where it trains (and saying how many)."""
    covered, total, width = coverage(chunks)
    if not covered:
        raise DataError("--distill-from data: no trained token has a stored target distribution (write the data "
                        "with pard regenerate --top-logprobs N; or what it stored is not what is trained)")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"pard: distilling from the target's stored top-{width} at {covered:,} of {total:,} trained tokens "
              f"({covered / total:.1%})", file=sys.stderr)
    return width


def report_feature_coverage(chunks) -> None:
    """How many tokens the stored features reach (refused when none: the records are not what is trained)."""
    covered = total = 0
    for rows in chunks[TARGET_FEATURE]:
        total += len(rows)
        covered += sum(r >= 0 for r in rows)
    if not covered:
        raise DataError("--target-features data: no training token has a stored target feature (what the target "
                        "read is not what is trained: another tokenizer, or changed texts)")
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"pard: target features at {covered:,} of {total:,} training tokens ({covered / total:.1%})",
              file=sys.stderr)


def train_or_resume(config: TrainConfig) -> Path:
    """Train unless ``config.output`` holds a finished run; continue an interrupted one (the staged builds use
    this: a stage that finished is skipped, one that was interrupted resumes)."""
    if not is_finished(config.output):
        train(replace(config, resume=True))
    return Path(config.output)


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
        "target_features": config.target_features,
        "feature_drop": config.feature_drop if config.target_features else None,
        "slice_layers": config.slice_layers,
        "draft_vocab": config.draft_vocab,
        "kd_weight": config.kd_weight if config.distill_from else None,
        "ce_weight": config.ce_weight,
        "cat_weighting": config.cat_weighting,
        "train_loss": result.training_loss if math.isfinite(result.training_loss) else None,
        "segments": trainer.all_segments(),
        "config": {k: v for k, v in asdict(config).items() if k not in {"cod", "data_config"}},
    }

"""What a training run is: :class:`CODConfig` (the layout of PARD samples), :class:`DataConfig` (records ->
sequences) and :class:`TrainConfig` (everything `pard train` needs). Each field's metadata carries its help text;
the CLI generates its options from them.

Light on purpose: building the command line imports this module, not torch, the Trainer or ``datasets``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from ..errors import InvalidArgumentError

MIN_DRAFT_VOCAB = 16  # --draft-vocab below this is a head that can say little beyond EOS (a typo, not a choice)
DISTILL_FROM_DATA = "data"  # --distill-from data: the target's distributions stored by pard regenerate
FEATURES_FROM_DATA = "data"  # --target-features data: the hidden states stored by pard regenerate --store-features


@dataclass(frozen=True)
class CODConfig:
    """The layout of PARD training samples."""

    num_draft_tokens: int = field(default=8, metadata={
        "help": "K_train: tokens predicted per pass (subtasks per sample; 1 = plain AR training)",
        "flags": ("-k", "--num-draft-tokens")})
    retention: float = field(default=0.7, metadata={
        "help": "COD retention decay r: subtask k keeps r^(k-1) of its positions (Eq. 9; 1 = no dropping)",
        "flags": ("--r",)})
    min_retention: float = field(default=0.2, metadata={
        "help": "COD minimum retention r_min: no subtask keeps less (Eq. 11)", "flags": ("--r-min",)})

    def __post_init__(self):
        if self.num_draft_tokens < 1:
            raise InvalidArgumentError(f"K must be >= 1, got {self.num_draft_tokens}")
        if not 0.0 < self.retention <= 1.0:  # also false for NaN
            raise InvalidArgumentError(f"r must be in (0, 1], got {self.retention}")
        if not 0.0 <= self.min_retention <= 1.0:
            raise InvalidArgumentError(f"r_min must be in [0, 1], got {self.min_retention}")
        if self.min_retention > self.retention:
            raise InvalidArgumentError(
                f"r_min ({self.min_retention}) must not exceed r ({self.retention}): r_min is the floor of the "
                "decaying retention r^(k-1)"
            )

    def retention_of(self, k: int) -> float:
        """gamma_k = max(r^(k-1), r_min): the kept fraction of subtask k (1-based). Eq. 11."""
        return max(self.retention ** (k - 1), self.min_retention)

    def expected_tokens(self, num_tokens: int, trainable: Sequence[bool] | None = None) -> float:
        """Expected sample length for a sequence of ``num_tokens`` tokens: sum_k N_k gamma_k, with N_k positions
        for subtask k. Without label masking N_k = N - k, and this tends to Eq. 10/11's N * sum_k gamma_k for
        N >> K. With ``trainable`` (per token), subtask 1 still holds all N - 1 real tokens, but a subtask k >= 2
        keeps only positions whose label x_{j+k} is trainable: N_k = trainable tokens at index >= k."""
        if trainable is None:
            trainable = [True] * num_tokens
        after = list(accumulate(int(t) for t in reversed(trainable)))[::-1] + [0]  # after[i]: trainable at >= i
        return max(num_tokens - 1, 0) + sum(after[min(k, num_tokens)] * self.retention_of(k)
                                            for k in range(2, self.num_draft_tokens + 1))


@dataclass
class DataConfig:
    """How records become training sequences."""

    text_field: str = field(default="text", metadata={"help": "field holding plain text"})
    messages_field: str = field(default="messages", metadata={"help": "field holding chat messages"})
    assistant_only: bool = field(default=False, metadata={"help": "train only on assistant tokens of chats"})
    max_seq_len: int = field(default=512, metadata={"help": "tokens per training sequence (before COD)"})
    packing: bool = field(default=True, metadata={
        "help": "one record per sequence (padded batches) instead of packing records into max-seq-len chunks",
        "flags": ("--no-packing",)})
    split: str = field(default="train", metadata={"help": "split of hub datasets", "flags": ("--data-split",)})


@dataclass
class TrainConfig:
    """Everything `pard train` needs (each field is one CLI option)."""

    model: str = field(metadata={"help": "the autoregressive draft to adapt (or, with --slice-layers, the model to "
                                         "slice): hub id, local dir, .gguf file, zoo:NAME or tiny:NAME"})
    data: list[str] = field(metadata={"help": "data files (json/jsonl/parquet/txt), stdlib[:split] or hub names"})
    output: str = field(metadata={"help": "output directory (new or empty; checkpoints go inside it)"})
    cod: CODConfig = field(default_factory=CODConfig)
    data_config: DataConfig = field(default_factory=DataConfig)
    epochs: float = field(default=1.0, metadata={"help": "training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (overrides epochs)"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW, cosine decay)",
                                                         "flags": ("--lr", "--learning-rate")})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of steps of linear warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=8, metadata={"help": "sequences per device per step"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    group_by_length: bool = field(default=True, metadata={
        "help": "plain random batches instead of batches of packed samples of similar length (less padding)",
        "flags": ("--no-group-by-length",)})
    mask_token_ids: list[int] | None = field(
        default=None, metadata={"help": "reuse these token ids as mask tokens (one shared id, or one per depth)",
                                "flags": ("--mask-token-id",), "metavar": "ID", "exclusive": "mask"}
    )
    add_mask_token: bool = field(default=False, metadata={"help": "add a new special mask token and resize",
                                                          "exclusive": "mask"})
    slice_layers: str | None = field(default=None, metadata={
        "help": "start the draft as a slice of --model: keep these decoder layers (e.g. 0-3 or 0,1,2,29) with its "
                "embeddings and final norm; tensors still equal to --model's are not stored twice (the draft "
                "names --model as its base)", "metavar": "LAYERS"})
    draft_vocab: int = field(default=0, metadata={
        "help": "reduced draft vocabulary: an LM head over the N most frequent trained tokens of the data (fewer "
                "if the data has fewer distinct ones); the draft never proposes the others and decoding stays "
                "exact. 0 = the full vocabulary",
        "metavar": "N"})
    freeze_embeddings: bool = field(default=False, metadata={
        "help": "keep the input embeddings fixed (with --slice-layers they are then taken from the base)"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and COD drop patterns"})
    save_steps: int = field(default=500, metadata={"help": "write a checkpoint every N steps"})
    save_total_limit: int = field(default=2, metadata={"help": "keep this many checkpoints"})
    logging_steps: int = field(default=10, metadata={"help": "log loss and tokens/s every N steps"})
    resume: bool = field(default=False, metadata={
        "help": "continue the run in --output from its last complete checkpoint (starts fresh if it has none)"})
    bf16: bool = field(default=False, metadata={
        "help": "bf16 mixed precision (GPUs that support it; CPUs with AMX or AVX512-BF16)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "attention kernel",
                                                               "choices": ("sdpa", "eager")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    deepspeed: str | None = field(default=None, metadata={"help": "a DeepSpeed config file"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub"})
    report_to: str = field(default="none", metadata={"help": "where to log: tensorboard, wandb, ... or none"})
    disable_progress: bool = field(default=False, metadata={"help": "no progress bar (logs only)",
                                                            "flags": ("--no-progress",)})
    distill_from: str | None = field(
        default=None, metadata={"help": "add a KL term towards this target's distributions (token-level alignment); "
                                        "'data': the target's top-N stored in the data by `pard regenerate "
                                        "--top-logprobs N`, so the target never runs in training (a model "
                                        "directory named data: ./data)",
                                "metavar": "TARGET"}
    )
    target_features: str | None = field(
        default=None, metadata={"help": "train a feature draft: one that also reads the target's hidden states "
                                        "(pard.target_features). 'data': the states stored by `pard regenerate "
                                        "--store-features`, so the target never runs in training; or a TARGET "
                                        "model, run over every batch (a GPU's way). A --model that already reads "
                                        "these layers of this target keeps its adapter and trains it on",
                                "metavar": "data|TARGET"})
    feature_layers: list[int] | None = field(
        default=None, metadata={"help": "with --target-features TARGET: the target layers read (indices into its "
                                        "hidden states, 0 = embeddings, -1 = the last; default -1); with data: "
                                        "some of the stored ones (default all)", "metavar": "LAYER"})
    feature_scale: float = field(default=0.1, metadata={
        "help": "the adapter's output scale (of W n(f), n: each dimension of the target's states standardised), so "
                "that its output is about the size of the embeddings it is added to"})
    feature_drop: float = field(default=0.1, metadata={
        "help": "share of training samples that see no features, so the draft also runs target-independently"})
    adapter_only: bool = field(default=False, metadata={
        "help": "with --target-features: train only the feature adapter; the draft's own weights stay as --model "
                "has them, so its target-independent mode is exactly --model (e.g. a token-only draft, made a "
                "feature draft)"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the cross-entropy term (PARD-2: 0.1 with "
                                                             "--kd-weight 1)"})
    cat_weighting: bool = field(default=False, metadata={
        "help": "weight each position by the target's probability of the tokens its masks stand for (PARD-2's "
                "CAT), from the top-N stored by `pard regenerate --top-logprobs N`"})
    kd_weight: float = field(default=1.0, metadata={"help": "weight of the distillation term"})
    kd_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the distillation term"})

    def validate(self) -> None:
        """Refuse settings that would fail (or silently misbehave) after the model and data are loaded."""
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be >= 1, got {self.grad_accum}"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0,
             f"--lr must be a positive number, got {self.learning_rate}"),
            (math.isfinite(self.epochs) and (self.epochs > 0 or self.max_steps > 0),
             f"--epochs must be a positive number (or set --max-steps), got {self.epochs}"),
            (self.max_steps == -1 or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}"),
            (math.isfinite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
             f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.save_steps >= 1 and self.logging_steps >= 1, "--save-steps and --logging-steps must be >= 1"),
            (math.isfinite(self.kd_weight) and self.kd_weight >= 0, f"--kd-weight must be >= 0, got {self.kd_weight}"),
            (math.isfinite(self.kd_temperature) and self.kd_temperature > 0,
             f"--kd-temperature must be > 0, got {self.kd_temperature}"),
            (self.data_config.max_seq_len >= self.cod.num_draft_tokens + 1,
             f"--max-seq-len {self.data_config.max_seq_len} is below K + 1 = {self.cod.num_draft_tokens + 1}: "
             "every sequence needs a position for each of the K subtasks"),
            (bool(self.data), "no training data given (--data)"),
            (math.isfinite(self.ce_weight) and self.ce_weight >= 0, f"--ce-weight must be >= 0, got {self.ce_weight}"),
            (math.isfinite(self.feature_drop) and 0 <= self.feature_drop <= 1,
             f"--feature-drop must be in [0, 1], got {self.feature_drop}"),
            (math.isfinite(self.feature_scale) and self.feature_scale > 0,
             f"--feature-scale must be > 0, got {self.feature_scale}"),
            (self.feature_layers is None or self.target_features is not None,
             "--feature-layers needs --target-features (data or TARGET)"),
            (not self.adapter_only or self.target_features is not None,
             "--adapter-only needs --target-features (data or TARGET): it trains the feature adapter alone"),
            (self.draft_vocab == 0 or self.draft_vocab >= MIN_DRAFT_VOCAB,
             f"--draft-vocab {self.draft_vocab} is too small to propose anything useful (the end-of-text token "
             f"alone takes a row): give at least {MIN_DRAFT_VOCAB}, or 0 for the full vocabulary"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(message)
        if self.slice_layers is not None:
            from ..slicing import parse_layers

            parse_layers(self.slice_layers)
        from ..models import resolve_device

        resolve_device(self.device)

    def run_record(self) -> dict:
        """What identifies this run in its directory (``pard_run.json``); resuming needs the same COD layout."""
        return {"base_model": self.model, "data": list(self.data), "num_draft_tokens": self.cod.num_draft_tokens,
                "retention": self.cod.retention, "min_retention": self.cod.min_retention,
                "max_seq_len": self.data_config.max_seq_len, "slice_layers": self.slice_layers,
                "draft_vocab": self.draft_vocab, "freeze_embeddings": self.freeze_embeddings,
                "group_by_length": self.group_by_length, "target_features": self.target_features,
                "feature_drop": self.feature_drop, "adapter_only": self.adapter_only}

"""Loading targets and drafts, telling a parallel draft from an autoregressive one, checking that they fit.

Model specs accepted everywhere a model is named:
  * a Hugging Face hub id (``amd/PARD-Llama-3.2-1B``) or a local directory (``AutoModelForCausalLM``);
  * ``zoo:NAME`` — a member of the embedded family shipped in the package (see :mod:`pard.zoo`);
  * ``tiny:NAME`` — a tiny random model built in code (see :mod:`pard.tiny`), for offline smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .errors import InvalidArgumentError, ModelLoadError, VocabularyMismatchError

PARD_TOKEN_KEY = "pard_token"  # the config key official PARD checkpoints and upstream vLLM read
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def mask_token_ids_of(config: PretrainedConfig, key: str = PARD_TOKEN_KEY) -> list[int] | None:
    """The draft's mask token id(s) from ``config.<key>`` (an int, or a list for distinct ids per position)."""
    value = getattr(config, key, None)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def load_config(spec: str, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of ``spec`` without loading weights."""
    from transformers import AutoConfig

    spec = resolve_spec(spec)
    if spec.startswith("tiny:"):
        return load_model(spec, device="cpu").config
    try:
        return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the config of {spec!r}: {_first_line(err)}") from err


def draft_kind(config: PretrainedConfig) -> str:
    """``"pard"`` when the config carries an integer ``pard_token`` (``spd_type: "pard"`` may accompany it), else
    ``"ar"``."""
    return "pard" if mask_token_ids_of(config) else "ar"


def vocab_size(model: PreTrainedModel) -> int:
    """Rows of the output projection: the size of the distributions the model emits."""
    return model.get_output_embeddings().weight.shape[0]


def context_window(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device} requested but CUDA is not available; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | str:
    """``None``/"auto" -> bfloat16 on CUDA, float32 on CPU (exact and fast enough there); "checkpoint" keeps the
    dtype the weights are stored in."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "checkpoint":
        return "auto"  # transformers' name for "as stored"
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; choose auto, checkpoint, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    spec: str,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM by hub id, local directory or ``tiny:NAME``, in eval mode on ``device``."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    spec = resolve_spec(spec)
    if spec.startswith("tiny:"):
        from .tiny import TINY_MODELS, tiny_model

        name = spec.removeprefix("tiny:")
        if name not in TINY_MODELS:
            raise ModelLoadError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_MODELS)}")
        model = tiny_model(name).to(torch.float32 if dtype == "auto" else dtype)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                spec, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None
            )
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load model {spec!r}: {_first_line(err)}") from err
    return model.to(device).eval()


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    """The tokenizer that goes with ``spec`` (the byte-level one for ``tiny:`` models)."""
    spec = resolve_spec(spec)
    if spec.startswith("tiny:"):
        from .tiny import byte_tokenizer

        return byte_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the tokenizer of {spec!r}: {_first_line(err)}") from err


def check_tokenizers(target_tokenizer, draft_tokenizer) -> None:
    """Every token of the target's vocabulary must have the same id in the draft's (the draft may have more,
    e.g. an added mask token); else :class:`VocabularyMismatchError`."""
    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    wrong = [tok for tok, i in target_vocab.items() if draft_vocab.get(tok) != i]
    if wrong:
        tok = min(wrong, key=lambda t: target_vocab[t])
        raise VocabularyMismatchError(
            f"the draft's tokenizer does not match the target's: {len(wrong)} of {len(target_vocab)} target "
            f"tokens are missing or numbered differently (e.g. {tok!r}: target id {target_vocab[tok]}, draft id "
            f"{draft_vocab.get(tok)}); target and draft must come from one model family"
        )


def check_compatible(target: PreTrainedModel, draft: PreTrainedModel, target_tokenizer=None, draft_tokenizer=None):
    """Raise :class:`VocabularyMismatchError` unless draft token ids mean the same tokens to the target.

    With both tokenizers, :func:`check_tokenizers` decides and the models' output sizes may differ (vocabulary
    padding). Without tokenizers, the output sizes must be equal.
    """
    if target_tokenizer is not None and draft_tokenizer is not None:
        check_tokenizers(target_tokenizer, draft_tokenizer)
        return
    if vocab_size(target) != vocab_size(draft):
        raise VocabularyMismatchError(
            f"target and draft vocabulary sizes differ ({vocab_size(target)} vs {vocab_size(draft)}) and no "
            "tokenizers were given to show they agree"
        )


@dataclass
class ModelPair:
    """A loaded target (+ draft) with tokenizer(s) and the draft's kind (``"pard"`` or ``"ar"``)."""

    target: PreTrainedModel
    tokenizer: object
    draft: PreTrainedModel | None = None
    draft_tokenizer: object | None = None

    @property
    def draft_kind(self) -> str | None:
        return draft_kind(self.draft.config) if self.draft is not None else None


def load_pair(
    target: str,
    draft: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> ModelPair:
    """Load target and draft (same dtype and device) and check up front that they share a vocabulary."""
    tokenizer = load_tokenizer(target, trust_remote_code=trust_remote_code)
    draft_tokenizer = load_tokenizer(draft, trust_remote_code=trust_remote_code) if draft else None
    target_model = load_model(target, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    draft_model = None
    if draft:
        draft_model = load_model(draft, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        check_compatible(target_model, draft_model, tokenizer, draft_tokenizer)
    return ModelPair(target_model, tokenizer, draft_model, draft_tokenizer)


def resolve_spec(spec: str) -> str:
    """``zoo:NAME`` -> the member's directory inside the package; anything else unchanged."""
    if not spec.startswith("zoo:"):
        return spec
    from .zoo import zoo_path

    return str(zoo_path(spec.removeprefix("zoo:")))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

"""Loading targets and drafts, telling a parallel draft from an autoregressive one, checking that they fit.

Model specs accepted everywhere a model is named:
  * a Hugging Face hub id (``amd/PARD-Llama-3.2-1B``) or a local directory (``AutoModelForCausalLM``);
  * ``zoo:NAME`` — a member of the embedded family shipped in the package (see :mod:`pard.zoo`);
  * ``tiny:NAME`` — a tiny random model built in code (see :mod:`pard.tiny`), for offline smoke runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .errors import InvalidArgumentError, ModelLoadError
from .mask_tokens import mask_token_ids_of
from .specs import resolve_spec
from .vocab import check_compatible

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")

def _looks_like_path(spec: str) -> bool:
    """A spec the user meant as a local path: hub ids are ``name`` or ``org/name``, never more or absolute."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def check_local_model(spec: str, *, need_tokenizer: bool = False) -> None:
    """One clear line for local paths that cannot be a model: missing, a file, or a directory without config.json
    (or without tokenizer files when ``need_tokenizer``). Hub ids pass through to the hub client."""
    path = Path(spec).expanduser()
    if not path.exists():
        if _looks_like_path(spec):
            raise ModelLoadError(f"{spec}: no such file or directory")
        return
    if not path.is_dir():
        raise ModelLoadError(f"{spec}: not a model directory (a file)")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{spec}: not a model directory (no config.json)")
    if need_tokenizer and not _has_tokenizer(path):
        raise ModelLoadError(f"{spec}: the model directory has no tokenizer (tokenizer.json or tokenizer_config.json)")


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                             "vocab.json"))


def _local_config(spec: str) -> dict:
    """config.json of a local model directory as a dict ({} for anything else)."""
    path = Path(spec) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def base_of(spec: str) -> str | None:
    """The base model a draft borrows tensors from (see :mod:`pard.base_weights`), if any."""
    from .base_weights import BASE_KEY

    return _local_config(resolve_spec(spec)).get(BASE_KEY)


def load_config(spec: str, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of ``spec`` without loading weights."""
    from transformers import AutoConfig

    spec = resolve_spec(spec)
    if spec.startswith("tiny:"):
        return load_model(spec, device="cpu").config
    check_local_model(spec)
    try:
        return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the config of {spec!r}: {_first_line(err)}") from err


def draft_method(config) -> str:
    """The decoding method a draft implies: ``"pard"`` when its config carries a mask token (``pard_token``), else
    ``"vsd"`` (an ordinary autoregressive draft drafts one token per forward)."""
    return "pard" if mask_token_ids_of(config) else "vsd"


def implied_method(draft_config) -> str:
    """``draft_method`` of a draft's config, or ``"ar"`` when there is no draft."""
    return "ar" if draft_config is None else draft_method(draft_config)


def context_window(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEVICE_TYPES:
        raise InvalidArgumentError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N")
    device = parsed
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
        check_local_model(spec)
        try:
            if _is_assembled(spec):
                model = _load_assembled(spec, dtype, trust_remote_code)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    spec, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None
                )
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load model {spec!r}: {_first_line(err)}") from err
    return model.to(device).eval()


def _is_assembled(spec: str) -> bool:
    """A local draft that transformers alone cannot load: a reduced-vocabulary head, tensors from its base, or a
    feature adapter (transformers would drop its weights as unexpected)."""
    from .base_weights import BASE_KEY
    from .draft_vocab import DRAFT_VOCAB_KEY
    from .target_features import FEATURES_KEY

    config = _local_config(spec)
    return DRAFT_VOCAB_KEY in config or BASE_KEY in config or FEATURES_KEY in config


def _load_assembled(spec: str, dtype, trust_remote_code: bool) -> PreTrainedModel:
    """Build the model from its config, give it its reduced head, and load its own tensors plus those it takes
    from its base (see :mod:`pard.base_weights`, :mod:`pard.draft_vocab`)."""
    from safetensors.torch import load_file

    from .base_weights import BASE_KEY, SHARED_KEY, WEIGHTS, base_tensors
    from .draft_vocab import DRAFT_VOCAB_KEY, attach_subset_head, empty_subset_head
    from .target_features import attach_adapter, feature_record

    config = load_config(spec, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if getattr(config, DRAFT_VOCAB_KEY, None):
        attach_subset_head(model, list(range(getattr(config, DRAFT_VOCAB_KEY))))
        model.set_output_embeddings(empty_subset_head(config))
    if feature_record(config) is not None:
        attach_adapter(model, feature_record(config))
    state = load_file(str(Path(spec) / WEIGHTS))
    if getattr(config, BASE_KEY, None):
        state.update(base_tensors(getattr(config, BASE_KEY), list(getattr(config, SHARED_KEY, []))))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"{spec}: weights do not match the config (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(torch.float32 if dtype == "auto" else dtype)


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    """The tokenizer that goes with ``spec`` (the byte-level one for ``tiny:`` models)."""
    spec = resolve_spec(spec)
    if spec.startswith("tiny:"):
        from .tiny import byte_tokenizer

        return byte_tokenizer()
    base = base_of(spec)
    if base is not None and not _has_tokenizer(Path(spec)):  # a draft that borrows from its base: its tokenizer too
        return load_tokenizer(base, trust_remote_code=trust_remote_code)
    check_local_model(spec, need_tokenizer=True)
    try:
        return AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the tokenizer of {spec!r}: {_first_line(err)}") from err


@dataclass
class ModelPair:
    """A loaded target (+ draft) with tokenizer(s)."""

    target: PreTrainedModel
    tokenizer: object
    draft: PreTrainedModel | None = None
    draft_tokenizer: object | None = None

    @property
    def method(self) -> str:
        """The method this pair implies: ``pard`` (parallel draft), ``vsd`` (autoregressive draft) or ``ar``."""
        return implied_method(self.draft.config if self.draft is not None else None)


def load_pair(
    target: str,
    draft: str | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> ModelPair:
    """Load target and draft (same dtype and device) and check up front that they share a vocabulary.

    The one place a pair is loaded and checked: every command goes through here, so a pair with the same tokenizer
    but differently padded output layers (Qwen2.5-7B with a 0.5B draft) is accepted everywhere.
    """
    tokenizer = load_tokenizer(target, trust_remote_code=trust_remote_code)
    draft_tokenizer = load_tokenizer(draft, trust_remote_code=trust_remote_code) if draft else None
    target_model = load_model(target, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    draft_model = None
    if draft:
        draft_model = load_model(draft, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        check_compatible(target_model, draft_model, tokenizer, draft_tokenizer)
    return ModelPair(target_model, tokenizer, draft_model, draft_tokenizer)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

"""`pard export`: a self-contained PARD draft directory that upstream vLLM serves as a parallel draft.

Writes safetensors weights, a ``config.json`` with ``pard_token`` and ``spd_type: "pard"``, the tokenizer, the
training record when there is one, and a model card with the exact ``vllm serve`` line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .base_weights import BASE_KEY, SHARED_KEY
from .draft_vocab import DRAFT_VOCAB_KEY
from .errors import InvalidArgumentError
from .files import check_output_dir, publish_dir
from .mask_tokens import PARD_TOKEN_KEY, check_mask_ids, find_mask_token, mark_parallel_draft
from .models import load_config, load_model, load_tokenizer
from .specs import resolve_spec
from .target_features import adapter_of, detach_adapter, feature_record
from .training.rundir import TRAINING_INFO_FILE
from .vllm import serve_command, shell_line
from .vocab import check_tokenizers


def validate_pair(draft_tokenizer, target: str, mask_id: int, *, trust_remote_code: bool = False) -> None:
    """Refuse a target the draft cannot serve: different tokenizer, or a mask id outside its vocabulary."""
    check_tokenizers(load_tokenizer(target, trust_remote_code=trust_remote_code), draft_tokenizer)
    target_vocab = load_config(target, trust_remote_code=trust_remote_code).get_text_config().vocab_size
    if not 0 <= mask_id < target_vocab:
        raise InvalidArgumentError(
            f"the draft's mask token id {mask_id} is outside the target's vocabulary (size {target_vocab}); vLLM "
            "needs the mask id inside it: retrain with a reserved id of the family's tokenizer (--mask-token-id)"
        )


def check_exportable(draft: str, config) -> None:
    """Refuse a draft vLLM cannot serve in any form: a reduced-vocabulary LM head."""
    if getattr(config, DRAFT_VOCAB_KEY, None):
        raise InvalidArgumentError(
            f"{draft} has a reduced draft vocabulary ({getattr(config, DRAFT_VOCAB_KEY)} of {config.vocab_size} "
            "tokens): vLLM's draft models need a full-vocabulary LM head; serve it with pard, or export a draft "
            "trained without --draft-vocab"
        )


def check_servable(draft: str, config) -> None:
    """Refuse a draft directory vLLM cannot load as it is: what export refuses, and what export would fix (tensors
    kept in its base model, no tokenizer of its own, the mask id under another key)."""
    check_exportable(draft, config)
    folder = Path(resolve_spec(draft))
    missing = []
    if getattr(config, BASE_KEY, None):
        missing.append(f"its tensors {', '.join(getattr(config, SHARED_KEY, []))} live in its base "
                       f"{getattr(config, BASE_KEY)}")
    if folder.is_dir() and not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json",
                                                                         "tokenizer.model")):
        missing.append("it has no tokenizer")
    if feature_record(config) is not None:
        missing.append("it carries a feature adapter for its target's hidden states, which vLLM does not pass")
    if missing:
        raise InvalidArgumentError(f"vLLM cannot load {draft} as it is ({'; '.join(missing)}): run `pard export` "
                                   "on it first and serve the exported directory")


def export_draft(
    draft: str,
    output: str | Path,
    *,
    target: str | None = None,
    num_draft_tokens: int = 8,
    mask_token_id: int | None = None,
    mask_key: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export ``draft`` to ``output``; refuses a non-empty ``output`` unless ``overwrite`` (then it is replaced as a
    whole, atomically: a failed export leaves it as it was)."""
    if num_draft_tokens < 1:
        raise InvalidArgumentError(f"the number of draft tokens K must be >= 1, got {num_draft_tokens}")
    output = Path(output)
    check_output_dir(output, overwrite=overwrite, what="--output")  # before anything is loaded
    config = load_config(draft, trust_remote_code=trust_remote_code)
    check_exportable(draft, config)
    mask_id, found_under = find_mask_token(config, mask_token_id, mask_key)
    tokenizer = load_tokenizer(draft, trust_remote_code=trust_remote_code)
    model = load_model(draft, dtype="checkpoint", device="cpu", trust_remote_code=trust_remote_code)
    check_mask_ids([mask_id], model.get_input_embeddings().num_embeddings)
    if target:
        validate_pair(tokenizer, target, mask_id, trust_remote_code=trust_remote_code)
    if found_under and found_under != PARD_TOKEN_KEY and hasattr(model.config, found_under):
        delattr(model.config, found_under)
    mark_parallel_draft(model.config, [mask_id])
    for key in (BASE_KEY, SHARED_KEY):  # the export holds every tensor itself: vLLM loads it alone
        if hasattr(model.config, key):
            delattr(model.config, key)
    if adapter_of(model) is not None:  # vLLM's parallel drafting feeds no target states: the plain PARD form
        detach_adapter(model)
        print(f"pard: {draft} reads its target's hidden states, which vLLM's parallel drafting does not pass to a "
              "draft: exported without its feature adapter (it runs target-independently, as with "
              "--no-target-features)", file=sys.stderr)
    source = Path(resolve_spec(draft))
    info = None
    if (source / TRAINING_INFO_FILE).exists():
        info = json.loads((source / TRAINING_INFO_FILE).read_text())
    with publish_dir(output, overwrite=overwrite) as staging:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        if info is not None:
            shutil.copy(source / TRAINING_INFO_FILE, staging / TRAINING_INFO_FILE)
        (staging / "README.md").write_text(model_card(output, draft, mask_id, info, target, num_draft_tokens))
    return output


def model_card(output: Path, source: str, mask_id: int, info: dict | None, target: str | None, k: int) -> str:
    target_name = target or "YOUR_TARGET_MODEL"
    vllm = shell_line(serve_command(target_name, str(output), k))
    lines = [
        "---",
        "library_name: transformers",
        "tags: [pard, speculative-decoding, draft-model]",
        *([f"base_model: {info['base_model']}"] if info and "/" in str(info.get("base_model", "")) else []),
        "---",
        "",
        f"# PARD draft: {output.name}",
        "",
        "A parallel draft model for speculative decoding (PARD): one forward pass proposes K tokens, with mask "
        f"token id **{mask_id}** (`pard_token` in `config.json`) standing in for the tokens not yet seen. It "
        "serves every target that shares its tokenizer.",
        "",
        f"Exported from `{source}` by `pard export`.",
        "",
        "## Training",
        "",
    ]
    if info:
        lines += [
            "| setting | value |",
            "|---|---|",
            f"| base model | `{info.get('base_model')}` |",
            f"| K_train | {info.get('num_draft_tokens')} |",
            f"| COD r / r_min | {info.get('retention')} / {info.get('min_retention')} |",
            f"| data | {', '.join(f'`{d}`' for d in info.get('data', []))} |",
            f"| steps | {info.get('steps')} (batch {info.get('batch_size')}, max length {info.get('max_seq_len')}) |",
            f"| learning rate | {info.get('learning_rate')} |",
            f"| final loss | {info.get('final_loss')} |",
            "",
        ]
    else:
        lines += ["No training record (`pard_training.json`) came with the source draft.", ""]
    lines += [
        "## Use with vLLM",
        "",
        "```bash",
        vllm,
        "```",
        "",
        "or `pard serve --target TARGET --draft THIS_DIR -k 8` (needs `pip install 'pard-spec[vllm]'`).",
        "",
        "## Use with pard",
        "",
        "```bash",
        f"pard generate --target {target_name} --draft {output} -k {k} \"def quicksort(xs):\"",
        "```",
        "",
    ]
    return "\n".join(lines)

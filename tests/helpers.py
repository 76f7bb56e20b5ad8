"""Shared test helpers: the reference decoder and draft constructions (fixtures live in conftest.py)."""

from __future__ import annotations

import copy

import torch

PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3], [100, 20, 30, 40, 50, 60, 70, 80, 90]]


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The target's own greedy output, from transformers' generate (the reference every method must match)."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def as_pard_draft(model, mask_token_id: int):
    """A copy of ``model`` that declares ``mask_token_id`` as its pard_token (official checkpoint layout)."""
    draft = copy.deepcopy(model)
    draft.config.pard_token = mask_token_id
    draft.config.spd_type = "pard"
    return draft


def noisy_copy(model, scale: float, seed: int):
    """A copy of ``model`` with Gaussian noise on every weight: agrees with it often, not always (ragged accepts)."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return draft


def write_tiny_gguf(path, tokenizer_dir, *, seed: int = 0, architecture: str = "llama", tokenizer_model: str = "gpt2",
                    keep_tensors=None):
    """Write a tiny random Llama with the tokenizer in ``tokenizer_dir`` (a GPT-2 style BPE) as an F32 GGUF file the
    way llama.cpp's converter does (q/k rows permuted for its rotary layout), and return the model it holds.

    Broken files for the refusal tests: another ``architecture`` name in the header, another ``tokenizer_model``
    (its extra fields, e.g. a sentencepiece model's scores, are not written), only the GGUF tensors for which
    ``keep_tensors(name)`` is true."""
    import json

    import gguf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    heads, kv_heads = 4, 2
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()

    def permute(w, n_head):  # llama.cpp's convert_hf_to_gguf.py rotary permutation of q and k rows
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list([token for token, _ in vocab])
    special = set(tokenizer.all_special_ids)
    writer.add_token_types([3 if i in special else 1 for _, i in vocab])
    if tokenizer_model == "gpt2":  # a BPE's merges (a sentencepiece model would have scores instead)
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_bos_token_id(tokenizer.eos_token_id)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, array in state.items():
        if name in names:
            gguf_name = names[name]
        else:
            _, _, layer, *rest = name.split(".")
            module = ".".join(rest[:-1])
            if module == "self_attn.q_proj":
                array = permute(array, heads)
            elif module == "self_attn.k_proj":
                array = permute(array, kv_heads)
            gguf_name = f"blk.{layer}.{per_layer[module]}.weight"
        if keep_tensors is None or keep_tensors(gguf_name):
            writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model

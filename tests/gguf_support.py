"""Write a tiny Llama GGUF file (llama.cpp's layout, F32 tensors) from an HF model and tokenizer, for tests.

    state = write_llama_gguf(path, model, tokenizer, chat_template)   # -> the HF state dict written

Tensor names and the rotary permutation of q/k rows follow llama.cpp's converter, which
transformers undoes when it reads the file; the tokenizer goes in as a byte-level BPE
("gpt2") vocabulary with merges, as in SmolLM2's file.
"""

from __future__ import annotations

import json
from pathlib import Path

LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
CONTROL, NORMAL = 3, 1


def permute_rows(weight, heads: int):
    """llama.cpp's q/k row order for its rotary kernel (transformers reverses it on load)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def rope_theta(config) -> float:
    """transformers 4 keeps it on the config, transformers 5 in `rope_parameters`."""
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta") or config.rope_theta)


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module = rest.rsplit(".", 1)[0]
    return f"blk.{layer}.{LAYER_NAMES[module]}.weight"


def _tokenizer_tables(tokenizer) -> tuple[list[str], list[int], list[str]]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda item: item[1])
    tokens = [token for token, _ in vocab]
    special = set(tokenizer.all_special_tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, [CONTROL if t in special else NORMAL for t in tokens], merges


def write_llama_gguf(path: Path, model, tokenizer, chat_template: str) -> dict:
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    tokens, types, merges = _tokenizer_tables(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)  # as in SmolLM2's file: the conversion must turn it off
    writer.add_chat_template(chat_template)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    for name, tensor in state.items():
        array = tensor.float().numpy()
        if ".q_proj." in name:
            array = permute_rows(array, config.num_attention_heads)
        elif ".k_proj." in name:
            array = permute_rows(array, config.num_key_value_heads)
        writer.add_tensor(gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state

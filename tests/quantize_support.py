"""Helpers for the quantization tests: a LoRA adapter artifact on the tiny base, prompts, greedy decoding."""

from __future__ import annotations

from pathlib import Path

PROMPTS = ["First Citizen:\nBefore we proceed", "The king said", "To be, or not", "O Romeo, Romeo,"]


def make_adapter_artifact(base_dir: Path, dest: Path, seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) weights, written as a real adapter artifact."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    from training.artifact import ArtifactWriter, fingerprint_model_dir
    from training.artifact.loading import load_base

    torch.manual_seed(seed)
    base = load_base(str(base_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base.model, config)
    fields = {"name": dest.name, "kind": "adapter", "base": {"id": str(base_dir), "sha256": fingerprint_model_dir(base_dir)},
              "method": "lora"}
    with ArtifactWriter(dest, fields) as writer:
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(writer.path / "adapter_model.safetensors"))
        model.peft_config["default"].save_pretrained(str(writer.path))
    return dest


def greedy_tokens(model, tokenizer, prompts=PROMPTS, new_tokens: int = 12):
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:]


def teacher_forced_agreement(model, reference, tokenizer, prompts=PROMPTS, new_tokens: int = 12) -> float:
    """Share of steps of `reference`'s greedy continuation where `model`, fed the same prefix, picks the same token."""
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        sequence = reference.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(sequence[:, batch["input_ids"].shape[1]:])], dim=1)
        steps = slice(batch["input_ids"].shape[1] - 1, -1)
        want = reference(input_ids=sequence, attention_mask=mask).logits[:, steps].argmax(-1)
        got = model(input_ids=sequence, attention_mask=mask).logits[:, steps].argmax(-1)
    return float((got == want).float().mean())


def last_logits(model, tokenizer, prompts=PROMPTS):
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1].float()


def copy_tokenizer(dest: Path) -> None:
    """Give a hand-built model directory a tokenizer (the MiniLM WordPiece one: small, offline)."""
    from transformers import AutoTokenizer

    from training.artifact import resolve_base_dir

    AutoTokenizer.from_pretrained(str(resolve_base_dir("all-minilm-l6-v2"))).save_pretrained(dest)

"""Build the embedded tiny base model: a byte-level BPE tokenizer and a small Llama, pretrained briefly.

    tuneserve base build                 # into ~/.cache/tuneserve/base/tiny-llama (TUNESERVE_CACHE)
    build_base(BaseBuildConfig(steps=60)) # from Python; returns the model directory

The tokenizer is trained with `tokenizers` on the shipped corpus (`corpus.txt`), the model is
a `LlamaForCausalLM` built from config (~4M parameters, every dimension divisible by 32 so
bitsandbytes 4-bit works) and pretrained with AdamW + warmup/cosine on packed corpus
blocks. The result is a normal HF model directory (safetensors only) with a chat template,
so everything downstream treats it like any hub model. A finished build with the same
config is reused; a different config rebuilds. Writes go to a temp dir, then an atomic rename.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path

from pydantic import Field, model_validator

from training.artifact import embedded_base_dir, sha256_file
from training.base.corpus import CORPUS_PATH
from training.config import StrictModel
from training.errors import ConfigError

BUILD_INFO = "build_info.json"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}" + EOS + "\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


class BaseBuildConfig(StrictModel):
    """Shape and pretraining budget of the tiny base."""

    name: str = "tiny-llama"
    vocab_size: int = Field(4096, ge=512, le=65536)
    hidden_size: int = Field(256, gt=0)
    intermediate_size: int = Field(704, gt=0)
    num_layers: int = Field(4, ge=1, le=32)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(512, ge=32)
    seq_len: int = Field(128, ge=16)
    batch_size: int = Field(16, ge=1)
    steps: int = Field(300, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check_dims(self) -> "BaseBuildConfig":
        for field in ("vocab_size", "hidden_size", "intermediate_size"):
            if getattr(self, field) % 32:
                raise ValueError(f"{field}={getattr(self, field)} must be divisible by 32 (bitsandbytes 4-bit blocks)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_position_embeddings={self.max_position_embeddings}")
        return self


def _corpus_text() -> str:
    if not CORPUS_PATH.is_file():
        raise ConfigError(f"the base corpus {CORPUS_PATH} is missing", "regenerate it with python -m training.base.corpus")
    return CORPUS_PATH.read_text(encoding="utf-8")


def train_tokenizer(cfg: BaseBuildConfig, text: str):
    """A byte-level BPE tokenizer wrapped as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(text.split("\n\n"), trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, core.token_to_id(BOS))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        model_input_names=["input_ids", "attention_mask"],
                                        model_max_length=cfg.max_position_embeddings)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(cfg: BaseBuildConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def pretrain(model, tokenizer, text: str, cfg: BaseBuildConfig, progress: bool) -> list[float]:
    """Next-token training on packed blocks of the corpus; returns the loss per step."""
    import torch

    from training.progress import progress_bar

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    blocks = torch.tensor(ids[: len(ids) // cfg.seq_len * cfg.seq_len]).view(-1, cfg.seq_len)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses: list[float] = []
    model.train()
    with progress_bar("pretraining tiny base", cfg.steps, enabled=progress) as advance:
        for _ in range(cfg.steps):
            batch = blocks[torch.randint(len(blocks), (cfg.batch_size,), generator=generator)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            advance(loss=losses[-1])
    model.eval()
    return losses


def _finished_build(out_dir: Path, cfg: BaseBuildConfig) -> bool:
    try:
        info = json.loads((out_dir / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return False
    return info.get("config") == cfg.model_dump() and (out_dir / "model.safetensors").is_file()


def build_base(cfg: BaseBuildConfig | None = None, out_dir: Path | None = None, force: bool = False,
               progress: bool = True) -> Path:
    """Build (or reuse) the tiny base and return its HF model directory."""
    cfg = cfg or BaseBuildConfig()
    out_dir = Path(out_dir) if out_dir else embedded_base_dir(cfg.name)
    if not force and _finished_build(out_dir, cfg):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (parallel tests, two CLIs) may ask at once: one builds, the others wait and reuse.
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _finished_build(out_dir, cfg):
            return out_dir
        return _build_locked(cfg, out_dir, progress)


def _build_locked(cfg: BaseBuildConfig, out_dir: Path, progress: bool) -> Path:
    import torch

    from tuneserve import __version__

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    started = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{secrets.token_hex(4)}"
    try:
        text = _corpus_text()
        tokenizer = train_tokenizer(cfg, text)
        model = build_model(cfg, tokenizer)
        losses = pretrain(model, tokenizer, text, cfg, progress)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        window = min(10, len(losses))
        info = {"config": cfg.model_dump(), "tuneserve_version": __version__,
                "parameters": sum(p.numel() for p in model.parameters()),
                "initial_loss": sum(losses[:window]) / window, "final_loss": sum(losses[-window:]) / window,
                "seconds": round(time.monotonic() - started, 1), "corpus_sha256": sha256_file(CORPUS_PATH)}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))
        if out_dir.exists():
            old = out_dir.parent / f"{out_dir.name}.old-{secrets.token_hex(4)}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(threads)
    return out_dir


def read_build_info(model_dir: Path) -> dict:
    path = Path(model_dir) / BUILD_INFO
    return json.loads(path.read_text()) if path.is_file() else {}

"""Build the embedded tiny base model: a byte-level BPE tokenizer and a small Llama, pretrained briefly.

    tuneserve base build                   # into $TUNESERVE_CACHE/base/tiny-llama (default ~/.cache/tuneserve)
    build_base(BaseBuildConfig(steps=60))  # from Python; returns the model directory

The tokenizer is trained with `tokenizers` on the shipped corpus (`corpus.txt`); the model is
a `LlamaForCausalLM` built from config (~3.6M parameters, every matrix dimension divisible
by 32 so bitsandbytes 4-bit works) and pretrained with AdamW + warmup/cosine on packed
blocks of `<s> document </s>` token streams. The result is a normal HF model directory
(safetensors only, a chat template on the tokenizer) plus `build_info.json`, so
everything downstream treats it like any hub model.

A finished build with the same config and corpus is reused as is; anything else rebuilds.
Builds write to a temp dir beside the target and swap it in atomically, under a file lock
so concurrent builders (parallel test sessions) do not collide.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from training.artifact import embedded_base_dir, sha256_file
from training.artifact.config import StrictModel
from training.artifact.errors import ConfigError
from training.artifact.version import tuneserve_version
from training.artifact.paths import CACHED_BASES, DEFAULT_BASE, SMALL_BASE
from training.base.corpus import CORPUS_PATH, split_documents

ENV_PREFIX = "TUNESERVE_BASE__"
BUILD_INFO = "build_info.json"
# Bump when the build recipe changes in a way that makes old builds stale (corpus format, packing, template).
BUILD_FORMAT = 2
BNB_BLOCK = 32
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}" + EOS + "\n\n"
    "{% else %}### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


# `size=small`: ~30M parameters (8 layers of width 512, 8 heads over 4 key/value heads), a few minutes of
# pretraining on 2 cores; the scale ladder's middle rung between tiny-llama (~5M) and SmolLM2-135M.
SMALL_SHAPE = {"name": SMALL_BASE, "hidden_size": 512, "intermediate_size": 1408, "num_layers": 8, "num_heads": 8,
               "num_kv_heads": 4, "max_position_embeddings": 1024, "steps": 200}


class BaseBuildConfig(StrictModel):
    """Shape and pretraining budget of the tiny base.

    batch_size 8 x seq_len 128 keeps the default 300-step build around two minutes on two
    CPU cores (about 0.3 s a step) while still seeing every corpus token about three times.
    """

    size: Literal["tiny", "small"] = Field("tiny", description="shape preset: tiny (~5M parameters, the test and "
                                           "default base) or small (~30M, named small-llama: the scale ladder's "
                                           "middle rung); explicit shape keys still win")
    name: str = Field(DEFAULT_BASE, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    vocab_size: int = Field(4096, ge=512, le=65536)
    hidden_size: int = Field(256, gt=0)
    intermediate_size: int = Field(704, gt=0)
    num_layers: int = Field(4, ge=1, le=32)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(512, ge=32)
    seq_len: int = Field(128, ge=16)
    batch_size: int = Field(8, ge=1)
    steps: int = Field(300, ge=1)
    lr: float = Field(3e-3, gt=0, le=1)
    warmup_steps: int = Field(20, ge=0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _size_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("size") == "small":
            return {**SMALL_SHAPE, **values}
        return values

    @field_validator("name")
    @classmethod
    def _not_a_pretrained_name(cls, value: str) -> str:
        if value not in (DEFAULT_BASE, SMALL_BASE) and value in CACHED_BASES:
            raise ValueError(f"{value!r} names a pretrained base, not a tiny build: run `{CACHED_BASES[value]}`, "
                             "or pick another name")
        return value

    @field_validator("vocab_size", "hidden_size", "intermediate_size")
    @classmethod
    def _bnb_blocks(cls, value: int, info) -> int:
        if value % BNB_BLOCK:
            lower = value // BNB_BLOCK * BNB_BLOCK
            raise ValueError(f"{info.field_name}={value} must be divisible by {BNB_BLOCK} so bitsandbytes 4-bit "
                             f"quantization works (try {lower or BNB_BLOCK} or {lower + BNB_BLOCK})")
        return value

    @model_validator(mode="after")
    def _check_shapes(self) -> "BaseBuildConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
        kv_dim = self.hidden_size // self.num_heads * self.num_kv_heads
        if kv_dim % BNB_BLOCK:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} gives key/value projections of width {kv_dim}, "
                             f"which must be divisible by {BNB_BLOCK}; use more kv heads or a larger head size")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_position_embeddings={self.max_position_embeddings}")
        return self


def read_build_info(model_dir: str | Path) -> dict:
    """The build record of a model directory, or {} if it has none (or an unreadable one)."""
    try:
        return json.loads((Path(model_dir) / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}


def corpus_documents() -> list[str]:
    if not CORPUS_PATH.is_file():
        raise ConfigError(f"the base corpus {CORPUS_PATH} is missing",
                          "regenerate it with `python -m training.base.corpus` or reinstall tuneserve")
    return split_documents(CORPUS_PATH.read_text(encoding="utf-8"))


def train_tokenizer(cfg: BaseBuildConfig, documents: list[str]):
    """A byte-level BPE tokenizer (any text round-trips) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(documents, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, core.token_to_id(BOS))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        model_input_names=["input_ids", "attention_mask"],
                                        model_max_length=cfg.max_position_embeddings,
                                        clean_up_tokenization_spaces=False, padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(cfg: BaseBuildConfig, tokenizer):
    """A freshly initialised fp32 Llama; the embedding keeps `cfg.vocab_size` rows even if BPE learned fewer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False, dtype="float32", **ids)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    return model


def packed_blocks(tokenizer, documents: list[str], seq_len: int):
    """`<s> doc </s>` for every document, concatenated and cut into rows of seq_len tokens."""
    import torch

    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id])
    rows = len(stream) // seq_len
    if rows == 0:
        raise ConfigError(f"the corpus has only {len(stream)} tokens, fewer than seq_len={seq_len}", "lower seq_len")
    return torch.tensor(stream[: rows * seq_len]).view(rows, seq_len)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    done = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def pretrain(model, blocks, cfg: BaseBuildConfig, progress: bool) -> list[float]:
    """Next-token training on randomly drawn packed blocks (seeded); returns the loss of every step."""
    import torch

    from training.progress import progress_bar

    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    losses: list[float] = []
    model.train()
    with progress_bar(f"pretraining {cfg.name}", cfg.steps, enabled=progress) as advance:
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


def build_identity(cfg: BaseBuildConfig) -> dict:
    """What a build is made from: every setting but `size`, which only fills in shape defaults (so a
    build recorded before the presets existed stays current)."""
    return cfg.model_dump(exclude={"size"})


def is_current_build(out_dir: Path, cfg: BaseBuildConfig) -> bool:
    """True if out_dir holds a finished build of exactly this config, corpus and recipe."""
    info = read_build_info(out_dir)
    return (info.get("config") == build_identity(cfg) and info.get("format") == BUILD_FORMAT
            and info.get("corpus_sha256") == sha256_file(CORPUS_PATH)
            and (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file())


@contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock beside out_dir, held while building (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: builds are not concurrent there in practice
        yield
        return
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp with renames only, so readers see the old build or the new one, never half."""
    old = out_dir.parent / f"{out_dir.name}.old-{secrets.token_hex(4)}"
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def build_threads() -> int:
    """min(2, cores), but 1 when the machine is already oversubscribed.

    Measured here with load average ~12 on 2 cores: 10 steps took 18.6 s with one torch thread
    and 147.6 s with two (the OpenMP threads wait on each other while descheduled).
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores + 1
    except OSError:  # getloadavg is unavailable on some platforms
        busy = False
    return 1 if busy else max(1, min(2, cores))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_build(cfg: BaseBuildConfig, tmp: Path, progress: bool) -> None:
    import torch

    started = time.monotonic()
    documents = corpus_documents()
    tokenizer = train_tokenizer(cfg, documents)
    model = build_model(cfg, tokenizer)
    losses = pretrain(model, packed_blocks(tokenizer, documents, cfg.seq_len), cfg, progress)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    window = min(10, len(losses))
    info = {"format": BUILD_FORMAT, "config": build_identity(cfg), "tuneserve_version": tuneserve_version(),
            "torch_threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer_vocab": len(tokenizer),
            "initial_loss": sum(losses[:window]) / window, "final_loss": sum(losses[-window:]) / window,
            "seconds": round(time.monotonic() - started, 1), "corpus_sha256": sha256_file(CORPUS_PATH),
            "corpus_documents": len(documents)}
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))


def build_base(cfg: BaseBuildConfig | None = None, out_dir: str | Path | None = None, force: bool = False,
               progress: bool = True) -> Path:
    """Build (or reuse) the tiny base and return its HF model directory."""
    cfg = cfg or BaseBuildConfig()
    out_dir = Path(out_dir).expanduser() if out_dir else embedded_base_dir(cfg.name)
    if not force and is_current_build(out_dir, cfg):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out_dir):
        if not force and is_current_build(out_dir, cfg):  # another process finished it while we waited
            return out_dir
        tmp = out_dir.parent / f"{out_dir.name}.tmp-{secrets.token_hex(4)}"
        try:
            with torch_threads(build_threads()):
                _write_build(cfg, tmp, progress)
            swap_in(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir

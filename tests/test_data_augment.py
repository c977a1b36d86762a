"""Augmentation: seeded EDA ops, character noise, offline and OpenAI-compatible backends."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from training.artifact.errors import DataError
from training.data.augment import WORD_OPS, augment_rows
from training.data.backends import (
    OfflineBackend,
    OpenAICompatibleBackend,
    Paraphraser,
    Translator,
)
from training.data.config import AugmentConfig, BackendConfig
from training.data.tasks import TASKS, Row
from training.data.thesaurus import SYNONYMS

WORDS = ["please", "help", "me", "buy", "a", "new", "card", "because", "my", "old", "card", "is", "lost"]


@pytest.mark.parametrize("op", sorted(WORD_OPS))
def test_word_ops_are_seeded_and_change_the_text(op):
    a = WORD_OPS[op](WORDS, 0.2, random.Random(5), SYNONYMS)
    b = WORD_OPS[op](WORDS, 0.2, random.Random(5), SYNONYMS)
    assert a == b and a != WORDS
    if op == "swap":
        assert sorted(a) == sorted(WORDS)
    if op == "delete":
        assert len(a) < len(WORDS) and all(w in WORDS for w in a)
    if op == "insert":
        assert len(a) > len(WORDS)
    if op == "synonym":
        assert len(a) == len(WORDS) and any(w not in WORDS for w in a)


def test_augment_rows_tags_rows_and_keeps_labels():
    train = [Row({"text": " ".join(WORDS), "label": "lost"}, "f:1"), Row({"text": "I want to pay my fee", "label": "fee"}, "f:2")]
    cfg = AugmentConfig(enabled=True, ops=["synonym", "swap", "char_noise", "paraphrase", "back_translation"], copies=4)
    new, info = augment_rows(train, cfg, TASKS["classification"])
    assert new and all(r.augmented for r in new) and all(r.output()["augmented"] is True for r in new)
    assert {r.data["label"] for r in new if r.origin.startswith("f:1")} == {"lost"}
    assert all(r.data["text"] not in {t.data["text"] for t in train} for r in new)
    assert info["added"] == len(new) and sum(info["by_op"].values()) == len(new)
    again, _ = augment_rows(train, cfg, TASKS["classification"])
    assert [r.data for r in again] == [r.data for r in new]


def test_offline_backend_implements_both_interfaces():
    backend = OfflineBackend()
    assert isinstance(backend, Paraphraser) and isinstance(backend, Translator)
    de = backend.translate(["I need help with my card"], "en", "de")[0]
    assert de == "Ich brauche hilfe mit mein karte"
    assert backend.translate([de], "de", "en")[0] == "I need help with my card"
    assert backend.paraphrase(["I need help fast"])[0] != "I need help fast"
    with pytest.raises(DataError, match="offline translator"):
        backend.translate(["x"], "en", "fr")


def test_openai_backend_sends_chat_completions_and_reads_the_reply():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, request.headers.get("authorization"), body))
        reply = body["messages"][1]["content"].upper()
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": f" {reply} "}}]})

    cfg = BackendConfig(kind="openai", base_url="http://server/v1", model="demo", api_key_env="TEST_DATA_KEY")
    import os

    os.environ["TEST_DATA_KEY"] = "sk-test"
    try:
        backend = OpenAICompatibleBackend(cfg, transport=httpx.MockTransport(handler))
    finally:
        del os.environ["TEST_DATA_KEY"]
    assert backend.paraphrase(["hello there"]) == ["HELLO THERE"]
    assert backend.translate(["good day"], "en", "de") == ["GOOD DAY"]
    path, auth, body = seen[1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "demo"
    assert "from en to de" in body["messages"][0]["content"]
    failing = OpenAICompatibleBackend(cfg, transport=httpx.MockTransport(lambda r: httpx.Response(503, text="busy")))
    with pytest.raises(DataError, match="HTTP 503"):
        failing.paraphrase(["x"])

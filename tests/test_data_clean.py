"""Cleaning rules: each transforms or drops what it should and reports its counts."""

from __future__ import annotations

import pytest

from training.data.cleaning import (
    mask_pii,
    run_cleaning,
    strip_html,
    strip_html_outside_code,
)
from training.data.config import CleaningConfig
from training.data.dedup import duplicate_clusters, near_duplicate_pairs
from training.data.tasks import TASKS, Row


def rows_of(*texts, labels=None):
    return [Row({"text": t, "label": (labels or ["a"] * len(texts))[i]}, f"f:{i + 1}") for i, t in enumerate(texts)]


def only(rule: str, **opts) -> CleaningConfig:
    cfg = CleaningConfig()
    for name in type(cfg).model_fields:
        getattr(cfg, name).enabled = name == rule
    for key, value in opts.items():
        setattr(getattr(cfg, rule), key, value)
    return cfg


def test_unicode_and_whitespace_rules_count_changed_rows():
    rows = rows_of("ﬁne\u00a0café", "tab\there  and\x07 bell\r\n\n\n\nend  ", "clean text")
    rows, res = run_cleaning(rows, only("unicode"), TASKS["classification"])
    assert rows[0].data["text"] == "fine café" and res["unicode"].changed == 1
    rows, res = run_cleaning(rows, only("whitespace"), TASKS["classification"])
    assert rows[1].data["text"] == "tab\there and bell\n\nend"
    assert res["whitespace"].changed == 1 and res["whitespace"].dropped == 0


def test_html_stripping_keeps_text_and_code():
    assert strip_html("<p>Hello <b>world</b> &amp; you</p><script>x()</script>") == "Hello world & you"
    assert strip_html("a < b and c > d") == "a < b and c > d"
    assert strip_html("fish &amp; chips") == "fish & chips"
    text = "Use <b>bold</b>: ```html\n<b>hi</b>\n``` or `<hr>`"
    assert strip_html_outside_code(text) == "Use bold: ```html\n<b>hi</b>\n``` or `<hr>`"


def test_pii_masking_counts_each_kind():
    counts: dict[str, int] = {}
    text = ("mail bob.smith@example.org, call +1 415-555-0134 or (020) 7946 0958, card 4111-1111-1111-1111, "
            "fake card 4111 1111 1111 1112, ip 192.168.10.5, not ip 999.1.1.1, date 2024-05-01, amount 1500")
    out = mask_pii(text, ["email", "card", "ip", "phone"], counts)
    assert "[EMAIL]" in out and "bob.smith" not in out
    assert out.count("[PHONE]") == 2 and "[CARD]" in out and "[IP]" in out
    assert "999.1.1.1" in out and "2024-05-01" in out and "1500" in out
    assert counts["email"] == 1 and counts["card"] == 1 and counts["ip"] == 1 and counts["phone"] >= 2
    _, res = run_cleaning(rows_of("write to a@b.io", "nothing here"), only("pii"), TASKS["classification"])
    assert res["pii"].changed == 1 and res["pii"].details["masked"]["email"] == 1


def test_length_filter_by_chars_and_whitespace_tokens():
    rows = rows_of("hi", "a good length row", "one two three four five six seven eight")
    kept, res = run_cleaning(rows, only("length", min_chars=3, max_tokens=5), TASKS["classification"])
    assert [r.data["text"] for r in kept] == ["a good length row"]
    assert res["length"].dropped == 2
    assert res["length"].details["reasons"] == {"too_few_chars": 1, "too_many_tokens": 1}


def test_length_filter_with_a_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    rows = rows_of("a, b", "a b c d e")  # 3 tokens (a , b) vs 5
    kept, _ = run_cleaning(rows, only("length", max_tokens=4, tokenizer=str(tmp_path / "tok")), TASKS["classification"])
    assert [r.data["text"] for r in kept] == ["a, b"]


def test_exact_dedup_reports_conflicting_labels():
    rows = rows_of("Reset my password", "reset  my PASSWORD", "reset my password", "other",
                   labels=["account", "account", "billing", "x"])
    kept, res = run_cleaning(rows, only("exact_dedup"), TASKS["classification"])
    assert [r.origin for r in kept] == ["f:1", "f:4"]
    assert res["exact_dedup"].dropped == 2 and res["exact_dedup"].details["conflicting_labels"] == 1


def test_near_dedup_drops_near_copies_only():
    base = "my card has not arrived after two weeks, what should I do now"
    rows = rows_of(base, base + "?", "my card has not arrived after two weeks what should i do", "how do I top up by bank transfer")
    kept, res = run_cleaning(rows, only("near_dedup", threshold=0.8), TASKS["classification"])
    assert [r.origin for r in kept] == ["f:1", "f:4"]
    assert res["near_dedup"].dropped == 2 and res["near_dedup"].details["pairs"] >= 2


def test_near_duplicate_pairs_agree_with_exact_jaccard():
    from training.data.dedup import jaccard, shingles

    texts = [f"order number {i} for the blue kettle was delivered to the wrong address" for i in range(30)]
    texts += ["completely unrelated sentence about weather in spring", "another one about trains and buses"]
    pairs = near_duplicate_pairs(texts, threshold=0.7)
    for a, b, sim in pairs:
        assert a < b and sim == pytest.approx(jaccard(shingles(texts[a]), shingles(texts[b])))
        assert sim >= 0.7
    found = {(a, b) for a, b, _ in pairs}
    truth = {(a, b) for a in range(len(texts)) for b in range(a + 1, len(texts))
             if jaccard(shingles(texts[a]), shingles(texts[b])) >= 0.7}
    assert len(found & truth) >= 0.95 * len(truth) and found <= truth
    clusters = duplicate_clusters(texts, threshold=0.7)
    assert len(set(clusters[:30])) == 1 and len(set(clusters)) == 3


def test_language_filter_keeps_allowed_and_too_short():
    rows = rows_of("This is a perfectly ordinary English sentence about the weather today.",
                   "Dies ist ein ganz normaler deutscher Satz über das Wetter von heute.",
                   "ok")
    kept, res = run_cleaning(rows, only("language", allowed=["en"], min_chars=20), TASKS["classification"])
    assert [r.origin for r in kept] == ["f:1", "f:3"]
    assert res["language"].details["reasons"] == {"lang_de": 1}
    assert res["language"].details["kept_too_short_to_judge"] == 1


def test_qa_cleaning_touches_answers_too():
    row = Row({"context": "Email x@y.com now", "question": "What?", "answers": ["x@y.com"]}, "f:1")
    [out], _ = run_cleaning([row], only("pii"), TASKS["qa"])
    assert out.data["context"] == "Email [EMAIL] now" and out.data["answers"] == ["[EMAIL]"]

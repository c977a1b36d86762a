"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation.metrics import (
    bleu,
    calibration_bins,
    classification_report,
    exact_match,
    expected_calibration_error,
    normalize_answer,
    paired_bootstrap,
    perplexity,
    rouge,
    squad_em_f1,
    token_f1,
)


def test_classification_report_by_hand():
    gold = ["cat", "cat", "dog", "dog", "bird"]
    pred = ["cat", "dog", "dog", "dog", "cat"]
    rep = classification_report(gold, pred, labels=["bird", "cat", "dog"])
    assert rep["accuracy"] == pytest.approx(3 / 5)
    # per class: bird P=0 R=0 F=0; cat P=1/2 R=1/2 F=1/2; dog P=2/3 R=1 F=0.8
    per = {row["label"]: row for row in rep["per_class"]}
    assert per["cat"]["precision"] == pytest.approx(0.5) and per["cat"]["recall"] == pytest.approx(0.5)
    assert per["dog"]["precision"] == pytest.approx(2 / 3) and per["dog"]["f1"] == pytest.approx(0.8)
    assert per["bird"]["support"] == 1 and per["bird"]["f1"] == 0
    assert rep["macro_precision"] == pytest.approx((0 + 0.5 + 2 / 3) / 3)
    assert rep["macro_f1"] == pytest.approx((0 + 0.5 + 0.8) / 3)
    assert rep["micro_f1"] == pytest.approx(3 / 5)  # single-label: micro F1 equals accuracy
    assert rep["confusion_matrix"] == [[0, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert "ece" not in rep


def test_ece_crafted():
    # bin (0.8, 0.9]: conf 0.9, 0.9, both right -> |1 - 0.9| = 0.1, weight 2/4
    # bin (0.5, 0.6]: conf 0.6, 0.6, one right   -> |0.5 - 0.6| = 0.1, weight 2/4
    conf = [0.9, 0.9, 0.6, 0.6]
    correct = [True, True, True, False]
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(0.1)
    # one bin: mean conf 0.75, accuracy 0.75 -> perfectly calibrated on average
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(0.0)
    bins = calibration_bins(conf, correct, n_bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert bins[8]["accuracy"] == 1.0 and bins[5]["accuracy"] == 0.5
    overconfident = expected_calibration_error([1.0, 1.0], [False, False], n_bins=5)
    assert overconfident == pytest.approx(1.0)


def test_report_includes_ece_when_confidences_given():
    rep = classification_report(["a", "b"], ["a", "a"], confidences=[0.95, 0.55], n_bins=10)
    assert rep["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)


@pytest.mark.parametrize(("raw", "normalized"), [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   apple,  a pear! ", "apple pear"),
    ("theater", "theater"),              # articles only as whole words
    ("Denver Broncos.", "denver broncos"),
    ("A", ""),
    ("U.S.-led", "usled"),
    ("\tTabs\nand  newlines ", "tabs and newlines"),
])
def test_squad_normalization(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_squad_em_f1_by_hand():
    assert squad_em_f1("the Denver Broncos", ["Denver Broncos", "Broncos"]) == (1.0, 1.0)
    # pred tokens {denver, broncos, team}; gold "broncos": P=1/3 R=1 -> F1=0.5; gold "denver broncos": P=2/3 R=1 -> 0.8
    assert token_f1("Denver Broncos team", ["Broncos", "Denver Broncos"]) == pytest.approx(0.8)
    assert exact_match("Denver Broncos team", ["Broncos", "Denver Broncos"]) == 0.0
    assert token_f1("Carolina Panthers", ["Denver Broncos"]) == 0.0
    # repeated tokens count once per occurrence: pred "a b b" vs gold "b b c" -> common 2, P=R=2/3
    assert token_f1("x y y", ["y y z"]) == pytest.approx(2 / 3)
    assert squad_em_f1("", ["the"]) == (1.0, 1.0)  # both normalize to empty
    assert squad_em_f1("", ["Paris"]) == (0.0, 0.0)
    assert token_f1("Paris", []) == 0.0


def test_bleu_and_rouge():
    text = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine"]
    b = bleu(text, text)
    assert b["bleu"] == pytest.approx(100.0) and b["per_sample"] == pytest.approx([100.0, 100.0])
    r = rouge(text, text)
    assert r["rouge1"] == pytest.approx(1.0) and r["rougeL"] == pytest.approx(1.0) and r["rouge2"] == pytest.approx(1.0)
    # "the cat" vs "the dog": unigram P=R=1/2 -> F=0.5; no shared bigram
    r = rouge(["the cat"], ["the dog"])
    assert r["rouge1"] == pytest.approx(0.5) and r["rouge2"] == 0.0
    assert bleu(["completely different words here"], ["nothing alike at all today"])["bleu"] < 1.0
    with pytest.raises(ValueError):
        bleu(["a"], ["a", "b"])


def test_perplexity():
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_paired_bootstrap_covers_mean_difference():
    rng = np.random.default_rng(1)
    a = rng.binomial(1, 0.6, size=400).astype(float)
    b = np.clip(a + rng.binomial(1, 0.15, size=400), 0, 1)  # b fixes some of a's misses
    res = paired_bootstrap(a, b, n_resamples=2000, seed=3)
    assert res.delta == pytest.approx(b.mean() - a.mean())
    assert res.low <= res.delta <= res.high
    assert res.low > 0 and res.p_value < 0.01
    same = paired_bootstrap(a, a, n_resamples=500)
    assert same.delta == 0 and same.low == 0 and same.high == 0 and same.p_value == 1.0
    noise = paired_bootstrap(a, rng.permutation(a), n_resamples=1000)
    assert noise.low < 0 < noise.high or noise.p_value > 0.01
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])

"""DriftMonitor on a real reference profile: banking77 prompts (in distribution) vs Shakespeare
(shifted), the tiny base's tokenizer and the real MiniLM encoder; gauges exported.

    pytest tests/test_drift_monitor.py
"""

import csv
import random
import time

import pytest

from service import metrics
from service.drift import DriftMonitor, DriftSettings, Reference
from service.drift.monitor import DEFAULT_THRESHOLDS
from training.artifact.profile import build_reference_profile


def _banking(shared_data, split):
    """The split's texts in a fixed shuffled order (the files are sorted by intent)."""
    with open(shared_data / "banking77" / f"{split}.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    random.Random(0).shuffle(texts)
    return texts


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base_dir))


@pytest.fixture(scope="module")
def reference(shared_data, tokenizer):
    import torch

    torch.set_num_threads(2)
    texts = _banking(shared_data, "train")[:1000]
    labels = ["card" if "card" in t.lower() else "other" for t in texts]
    confidences = _confidences(labels, seed=1)
    profile = build_reference_profile(texts, tokenizer, labels=labels, confidences=confidences, sample=64)
    return Reference(profile, profile.pop("embedding_sample"))


def _confidences(labels, seed):
    rng = random.Random(seed)
    return [rng.uniform(0.8, 1.0) if label == "card" else rng.uniform(0.5, 0.8) for label in labels]


def _feed(monitor, adapter, texts, tokenizer):
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        monitor.observe_prompt(adapter, text, len(ids), ids)


def _shakespeare(shared_data, n):
    lines = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split("\n\n")
    return [block.replace("\n", " ") for block in lines[100:100 + n]]


def test_in_distribution_stays_below_thresholds_and_shift_exceeds_them(shared_data, tokenizer, reference):
    settings = DriftSettings(window=200, min_samples=30, embedding={"sample": 32})
    monitor = DriftMonitor(settings, profile_source=lambda name: reference)
    _feed(monitor, "steady", _banking(shared_data, "test")[:200], tokenizer)
    _feed(monitor, "shifted", _shakespeare(shared_data, 200), tokenizer)
    scores = monitor.compute_all()
    for (feature, method), value in scores["steady"].items():
        assert value < settings.threshold(feature, method), (feature, method, value)
    shifted = scores["shifted"]
    assert set(shifted) >= {("prompt_length", "psi"), ("prompt_length", "ks"), ("token_oov", "psi"), ("embedding", "mmd")}
    for key in shifted:
        assert shifted[key] > settings.threshold(*key), (key, shifted[key])
    body = metrics.render()[0].decode()
    assert 'tuneserve_drift_score{adapter="shifted",feature="embedding",method="mmd"}' in body
    assert 'tuneserve_drift_threshold{adapter="shifted",feature="prompt_length",method="psi"} 0.25' in body
    assert 'tuneserve_drift_window_samples{adapter="steady"} 200.0' in body


def test_classifier_label_and_confidence_drift(shared_data, tokenizer, reference):
    monitor = DriftMonitor(DriftSettings(window=100, min_samples=30, embedding={"enabled": False}),
                           profile_source=lambda name: reference)
    _feed(monitor, "clf", _banking(shared_data, "test")[:100], tokenizer)
    labels = ["card" if "card" in text.lower() else "other" for text in _banking(shared_data, "test")[:100]]
    for label, confidence in zip(labels, _confidences(labels, seed=2)):
        monitor.observe_classification("clf", label, confidence)
    steady = monitor.compute("clf")
    assert steady[("label", "psi")] < 0.1 and steady[("confidence", "ks")] < 0.25
    assert ("embedding", "mmd") not in steady
    for _ in range(100):
        monitor.observe_classification("clf", "card", 0.31)
    shifted = monitor.compute("clf")
    assert shifted[("label", "psi")] > 0.25 and shifted[("confidence", "ks")] > 0.9


def test_small_windows_adapters_without_profile_and_disabled_monitor_export_nothing(tokenizer, reference):
    monitor = DriftMonitor(DriftSettings(min_samples=30), profile_source=lambda name: reference if name == "a" else None)
    _feed(monitor, "a", ["hello there"] * 10, tokenizer)
    _feed(monitor, "noprofile", ["hello there"] * 50, tokenizer)
    assert monitor.compute_all() == {"a": {}, "noprofile": {}}
    off = DriftMonitor(DriftSettings(enabled=False), profile_source=lambda name: reference)
    _feed(off, "a", ["x"] * 50, tokenizer)
    assert off.windows == {}


def test_thresholds_are_configurable_and_fall_back_to_defaults():
    settings = DriftSettings(thresholds={"prompt_length": {"psi": 0.5}})
    assert settings.threshold("prompt_length", "psi") == 0.5
    assert settings.threshold("prompt_length", "ks") == DEFAULT_THRESHOLDS["prompt_length"]["ks"]


def test_request_path_append_is_cheap_and_window_bounded(tokenizer, reference):
    monitor = DriftMonitor(DriftSettings(window=50), profile_source=lambda name: reference)
    ids = list(range(40))
    started = time.perf_counter()
    for _ in range(5000):
        monitor.observe_prompt("a", "some prompt text", 40, ids)
    per_call = (time.perf_counter() - started) / 5000
    assert per_call < 100e-6, per_call
    assert len(monitor.windows["a"].snapshot().lengths) == 50


def test_background_thread_updates_the_gauges(tokenizer, reference, shared_data):
    monitor = DriftMonitor(DriftSettings(window=60, min_samples=30, interval_s=0.1, embedding={"enabled": False}),
                           profile_source=lambda name: reference)
    _feed(monitor, "bg", _shakespeare(shared_data, 60), tokenizer)
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if 'tuneserve_drift_score{adapter="bg",feature="prompt_length",method="ks"}' in metrics.render()[0].decode():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the drift thread never exported a score")
    finally:
        monitor.stop()


def test_classifier_results_alone_open_the_window(shared_data, tokenizer, reference):
    """The service path: a classifier adapter's inputs and results arrive together (no generation
    ever opened its window), and label/confidence drift is scored from them."""
    monitor = DriftMonitor(DriftSettings(window=100, min_samples=30, embedding={"enabled": False}),
                           profile_source=lambda name: reference)
    texts = _banking(shared_data, "test")[:60]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    labels = ["card" if "card" in t.lower() else "other" for t in texts]
    ranked = [[(label, conf), ("x", 0.0)] for label, conf in zip(labels, _confidences(labels, seed=3))]
    monitor.observe_prompts("clf-only", texts, prompts, tokenizer, ranked)
    scores = monitor.compute("clf-only")
    assert scores[("label", "psi")] < 0.1 and ("prompt_length", "psi") in scores
    monitor.observe_prompts("clf-only", texts, prompts, tokenizer, [[("card", 0.3)]] * len(texts))
    assert monitor.compute("clf-only")[("label", "psi")] > 0.25

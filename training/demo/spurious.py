"""A synthetic classification dataset with a planted spurious attribute, written as a prepared dataset.

Each row is a short review with one sentiment word (from the true class with probability
`signal`, else from the other) and a group marker word (`group` slice: `a` or `b`). In the train
and validation splits group `a` is almost always positive (`bias`, e.g. 0.95) while group `b` is
balanced; in the test split both groups are balanced. A model that learns the marker as a shortcut
misclassifies the negative rows of group `a` at test time: a worst-slice gap on `column:group`
that adversarial debiasing (`debias: adversarial`, `adversary.attribute=group`) should narrow.

    path = write_spurious_dataset(Path("data/spurious"), seed=0)
    # tuneserve train task=classification data.path=data/spurious debias=adversarial adversary.attribute=group
    # tuneserve evaluate --model artifacts/x --data data/spurious      -> per-slice accuracy and the gap
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from training.data.prepared import canonical_json, dataset_fingerprint, fingerprint_rows, write_jsonl

POSITIVE = ("great", "lovely", "excellent", "wonderful", "superb", "delightful")
NEGATIVE = ("awful", "terrible", "dreadful", "horrible", "poor", "miserable")
MARKERS = {"a": ("alpha", "amber"), "b": ("beta", "blue")}
FILLER = ("the", "service", "was", "today", "food", "room", "staff", "and", "quite", "really", "visit", "place")
SLICE_KEY = "column:group"


def _row(rng: random.Random, group: str, label: str, signal: float) -> dict:
    true_words, other = (POSITIVE, NEGATIVE) if label == "pos" else (NEGATIVE, POSITIVE)
    word = rng.choice(true_words if rng.random() < signal else other)
    words = [rng.choice(MARKERS[group])] + rng.sample(FILLER, 4)
    words.insert(rng.randint(1, len(words)), word)
    return {"text": " ".join(words), "label": label, "slices": {SLICE_KEY: group}}


def spurious_rows(n: int, rng: random.Random, bias: float | None, signal: float) -> list[dict]:
    """`n` rows, half per group; group a positive with probability `bias` (None: balanced)."""
    rows = []
    for i in range(n):
        group = "a" if i % 2 == 0 else "b"
        p_pos = bias if (group == "a" and bias is not None) else 0.5
        rows.append(_row(rng, group, "pos" if rng.random() < p_pos else "neg", signal))
    rng.shuffle(rows)
    return rows


def write_spurious_dataset(out: Path, seed: int = 0, train: int = 400, validation: int = 100, test: int = 400,
                           bias: float = 0.95, signal: float = 0.85) -> Path:
    rng = random.Random(seed)
    splits = {"train": spurious_rows(train, rng, bias, signal), "validation": spurious_rows(validation, rng, bias, signal),
              "test": spurious_rows(test, rng, None, signal)}
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    split_fps = {k: fingerprint_rows(v) for k, v in splits.items()}
    config = {"generator": "training.demo.spurious", "seed": seed, "bias": bias, "signal": signal}
    meta = {"task": "classification", "fingerprint": dataset_fingerprint(split_fps, config),
            "rows": {k: len(v) for k, v in splits.items()}, "labels": ["neg", "pos"], "class_weights": None,
            "fields": {"text": "text", "label": "label"}, "source": ["synthetic"], "name": "spurious",
            "split_fingerprints": split_fps, "slices": [SLICE_KEY]}
    (out / "dataset.json").write_text(canonical_json(meta), encoding="utf-8")
    (out / "README.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out

"""Drift features: what is sampled from each request and how each is scored against the profile.

`Window` is the per-adapter rolling sample (bounded deques behind one lock); `FEATURES` is the
registry of scored features, each a name and a `score(reference, snapshot, settings)` returning
`{method: value}`:

| feature | sampled | reference (training.artifact.profile) | methods |
| --- | --- | --- | --- |
| prompt_length | prompt tokens | `tokens` histogram | psi, ks |
| token_oov | prompt token ids | `vocabulary.top_tokens` (+ everything else) | psi |
| embedding | latest prompt texts (MiniLM) | `reference_embeddings.safetensors` | mmd |
| label | predicted label (classifiers) | `labels` fractions | psi |
| confidence | top score (classifiers) | `confidence` histogram | psi, ks |
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from service.drift.stats import category_psi, ks_from_profile, mmd_rbf, psi_from_profile

MAX_TOKENS_KEPT = 256


@dataclass
class Snapshot:
    lengths: list[int]
    token_ids: list[np.ndarray]
    texts: list[str]
    labels: list[str]
    confidences: list[float]


class Window:
    def __init__(self, size: int, text_sample: int) -> None:
        self._lock = threading.Lock()
        self.lengths: deque[int] = deque(maxlen=size)
        self.token_ids: deque[np.ndarray] = deque(maxlen=size)
        self.texts: deque[str] = deque(maxlen=text_sample)
        self.labels: deque[str] = deque(maxlen=size)
        self.confidences: deque[float] = deque(maxlen=size)

    def add_prompt(self, text: str, n_tokens: int, token_ids: list[int] | None) -> None:
        ids = np.asarray(token_ids[:MAX_TOKENS_KEPT], dtype=np.int64) if token_ids else None
        with self._lock:
            self.lengths.append(n_tokens)
            self.texts.append(text)
            if ids is not None:
                self.token_ids.append(ids)

    def add_classification(self, label: str, confidence: float) -> None:
        with self._lock:
            self.labels.append(label)
            self.confidences.append(float(confidence))

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(list(self.lengths), list(self.token_ids), list(self.texts), list(self.labels),
                            list(self.confidences))


def _prompt_length(ref, snap: Snapshot, settings) -> dict[str, float]:
    dist = ref.profile.get("tokens") or {}
    if not dist.get("counts"):
        return {}
    return {"psi": psi_from_profile(dist, snap.lengths), "ks": ks_from_profile(dist, snap.lengths)}


def _token_oov(ref, snap: Snapshot, settings) -> dict[str, float]:
    top = ref.profile.get("vocabulary", {}).get("top_tokens") or []
    if not top or not snap.token_ids:
        return {}
    ids = np.concatenate(snap.token_ids)
    return {"psi": category_psi({int(t["id"]): float(t["fraction"]) for t in top}, ids.tolist())}


def _embedding(ref, snap: Snapshot, settings) -> dict[str, float]:
    if ref.embeddings is None or len(ref.embeddings) < 2 or len(snap.texts) < 2:
        return {}
    from training.artifact.profile import embed_texts

    live = embed_texts(snap.texts, max_length=settings.embedding.max_length)
    return {"mmd": mmd_rbf(ref.embeddings, live)}


def _label(ref, snap: Snapshot, settings) -> dict[str, float]:
    labels = ref.profile.get("labels")
    if not labels or len(snap.labels) < settings.min_samples:
        return {}
    return {"psi": category_psi(labels, snap.labels)}


def _confidence(ref, snap: Snapshot, settings) -> dict[str, float]:
    dist = ref.profile.get("confidence") or {}
    if not dist.get("counts") or len(snap.confidences) < settings.min_samples:
        return {}
    return {"psi": psi_from_profile(dist, snap.confidences), "ks": ks_from_profile(dist, snap.confidences)}


@dataclass(frozen=True)
class Feature:
    name: str
    score: Callable[[Any, Snapshot, Any], dict[str, float]]


FEATURES: tuple[Feature, ...] = (
    Feature("prompt_length", _prompt_length),
    Feature("token_oov", _token_oov),
    Feature("embedding", _embedding),
    Feature("label", _label),
    Feature("confidence", _confidence),
)

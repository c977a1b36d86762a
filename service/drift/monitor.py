"""Per-adapter rolling windows of live traffic and the background thread that scores them.

The request path only appends to bounded deques (`observe_prompts`, with each classifier
input's top label and score when given: a few microseconds); every `interval_s` a daemon thread reads each adapter's reference profile
(once, from its artifact), computes the scores of `service.drift.features` and exports them as
`tuneserve_drift_score{adapter,feature,method}` next to `tuneserve_drift_threshold` and
`tuneserve_drift_window_samples{adapter}`.

    monitor = DriftMonitor(DriftSettings(window=500), profile_source=lambda name: artifact_dir_or_None)
    monitor.start()
    monitor.observe_prompt("a1", "some prompt", n_tokens=12, token_ids=[...])
    monitor.observe_prompts("clf", texts, token_ids_per_text, tokenizer, ranked=[[("card", 0.9), ...], ...])
    monitor.compute_all()          # what the thread runs; returns {adapter: {(feature, method): score}}
    monitor.stop()
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import Field

from service import metrics
from service.drift.features import FEATURES, Window
from training.artifact.config import StrictModel

log = logging.getLogger("tuneserve.service.drift")

DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "prompt_length": {"psi": 0.25, "ks": 0.25},
    "token_oov": {"psi": 0.25},
    "embedding": {"mmd": 0.05},
    "label": {"psi": 0.25},
    "confidence": {"psi": 0.25, "ks": 0.25},
}


class EmbeddingDriftSettings(StrictModel):
    enabled: bool = Field(True, description="MMD on MiniLM embeddings of a sample of each window (costs CPU)")
    sample: int = Field(32, ge=2, le=1024, description="prompts embedded per computation")
    max_length: int = Field(128, ge=8, le=512)


class DriftSettings(StrictModel):
    enabled: bool = True
    window: int = Field(500, ge=10, description="prompts kept per adapter")
    min_samples: int = Field(30, ge=1, description="no scores until a window holds this many prompts")
    interval_s: float = Field(30.0, gt=0, description="seconds between background computations")
    sample_rate: float = Field(1.0, gt=0, le=1.0, description="fraction of requests recorded")
    embedding: EmbeddingDriftSettings = Field(default_factory=EmbeddingDriftSettings)
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {f: dict(m) for f, m in DEFAULT_THRESHOLDS.items()},
        description="feature -> method -> threshold (missing entries use the defaults)")

    def threshold(self, feature: str, method: str) -> float:
        return self.thresholds.get(feature, {}).get(method, DEFAULT_THRESHOLDS[feature][method])


@dataclass
class Reference:
    profile: dict[str, Any] | None
    embeddings: np.ndarray | None
    vocabulary: frozenset[int] = field(default_factory=frozenset)


def read_reference(artifact_dir: str | Path) -> Reference:
    """The verified artifact's reference profile (profile None when it has none)."""
    from training.artifact import load_artifact
    from training.artifact.profile import read_reference_profile

    profile, embeddings = read_reference_profile(load_artifact(Path(artifact_dir)))
    top = frozenset(int(t["id"]) for t in (profile or {}).get("vocabulary", {}).get("top_tokens", []))
    return Reference(profile, embeddings, top)


class DriftMonitor:
    def __init__(self, settings: DriftSettings, profile_source: Callable[[str], Any]) -> None:
        """`profile_source(adapter)` returns the adapter's artifact dir, a `Reference`, or None."""
        self.settings = settings
        self.profile_source = profile_source
        self.windows: dict[str, Window] = {}
        self.references: dict[str, Reference | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random(0)
        self._specials: dict[int, frozenset[int]] = {}

    # ---- request path (cheap) --------------------------------------------------------
    def _window(self, adapter: str) -> Window | None:
        if not self.settings.enabled or (self.settings.sample_rate < 1.0 and self._random.random() >= self.settings.sample_rate):
            return None
        window = self.windows.get(adapter)
        if window is None:
            with self._lock:
                window = self.windows.setdefault(adapter, Window(self.settings.window, self.settings.embedding.sample))
        return window

    def observe_prompt(self, adapter: str, text: str, n_tokens: int, token_ids: list[int] | None = None) -> None:
        window = self._window(adapter)
        if window is not None:
            window.add_prompt(text, n_tokens, token_ids)

    def observe_prompts(self, adapter: str, texts: list[str], prompts: list[list[int]], tokenizer: Any,
                        ranked: list[list[tuple[str, float]]] | None = None) -> None:
        """Encoded prompts as the service sees them (special tokens dropped: the profile has none);
        for a classifier also each input's result ((label, score) best first), kept with its prompt."""
        specials = self._specials.get(id(tokenizer))
        if specials is None:
            specials = self._specials.setdefault(id(tokenizer), frozenset(getattr(tokenizer, "all_special_ids", ())))
        for i, (text, ids) in enumerate(zip(texts, prompts)):
            window = self._window(adapter)
            if window is None:
                continue
            plain = [t for t in ids if t not in specials]
            window.add_prompt(text, len(plain), plain)
            if ranked is not None and ranked[i]:
                window.add_classification(ranked[i][0][0], ranked[i][0][1])

    def observe_classification(self, adapter: str, label: str, confidence: float) -> None:
        window = self.windows.get(adapter) if self.settings.enabled else None
        if window is not None:
            window.add_classification(label, confidence)

    def forget(self, adapter: str) -> None:
        """Drop an unloaded adapter's window and reference (a new version gets a new profile)."""
        with self._lock:
            self.windows.pop(adapter, None)
            self.references.pop(adapter, None)

    # ---- background ------------------------------------------------------------------
    def reference(self, adapter: str) -> Reference | None:
        if adapter not in self.references:
            source = self.profile_source(adapter)
            try:
                self.references[adapter] = source if isinstance(source, Reference) or source is None \
                    else read_reference(source)
            except Exception as exc:
                log.warning("drift: cannot read the reference profile of %s: %s", adapter, exc)
                self.references[adapter] = None
        ref = self.references[adapter]
        return ref if ref is not None and ref.profile is not None else None

    def compute(self, adapter: str) -> dict[tuple[str, str], float]:
        window = self.windows.get(adapter)
        ref = self.reference(adapter)
        if window is None or ref is None:
            return {}
        snapshot = window.snapshot()
        metrics.DRIFT_WINDOW.labels(metrics.adapter_label(adapter)).set(len(snapshot.lengths))
        if len(snapshot.lengths) < self.settings.min_samples:
            return {}
        scores: dict[tuple[str, str], float] = {}
        for feature in FEATURES:
            if feature.name == "embedding" and not self.settings.embedding.enabled:
                continue
            try:
                scores.update({(feature.name, method): value
                               for method, value in feature.score(ref, snapshot, self.settings).items()})
            except Exception as exc:
                log.warning("drift: %s of %s failed: %s", feature.name, adapter, exc)
        label = metrics.adapter_label(adapter)
        for (feature_name, method), value in scores.items():
            metrics.DRIFT_SCORE.labels(label, feature_name, method).set(value)
            metrics.DRIFT_THRESHOLD.labels(label, feature_name, method).set(self.settings.threshold(feature_name, method))
        return scores

    def compute_all(self) -> dict[str, dict[tuple[str, str], float]]:
        return {adapter: self.compute(adapter) for adapter in list(self.windows)}

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            try:
                self.compute_all()
            except Exception:
                log.exception("drift computation failed")

    def start(self) -> None:
        if self.settings.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tuneserve-drift", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

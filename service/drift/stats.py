"""Drift statistics of a live sample against a reference profile (numpy only, no state).

    psi(ref_counts, live_counts)                         # population stability index of two histograms
    psi_from_profile(profile["tokens"], live_lengths)    # bins = the profile's histogram edges
    ks_from_profile(profile["tokens"], live_lengths)     # KS distance to the profile's histogram CDF
    category_psi({"neg": .5, "pos": .5}, live_labels)    # categorical PSI (labels, top tokens + other)
    mmd_rbf(reference_embeddings, live_embeddings)       # squared MMD, RBF kernel, median bandwidth

Rules of thumb: PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted; KS distance is in [0, 1];
MMD² of MiniLM embeddings of same-distribution samples is near 0.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

EPSILON = 1e-4


def psi(reference: Sequence[float], live: Sequence[float]) -> float:
    """PSI of two histograms over the same bins (counts or fractions; empty bins smoothed)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return 0.0
    ref = np.clip(ref / ref.sum(), EPSILON, None)
    cur = np.clip(cur / cur.sum(), EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _open_edges(distribution: Mapping[str, Any]) -> np.ndarray:
    """The profile's histogram edges with the outer bins opened to ±inf (live values may fall outside)."""
    edges = np.asarray(distribution["edges"], dtype=np.float64).copy()
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def psi_from_profile(distribution: Mapping[str, Any], live: Iterable[float]) -> float:
    values = np.asarray(list(live), dtype=np.float64)
    if values.size == 0 or not distribution.get("counts"):
        return 0.0
    live_counts, _ = np.histogram(values, bins=_open_edges(distribution))
    return psi(distribution["counts"], live_counts)


def reference_cdf(distribution: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """CDF of the profile's histogram at `x`, linear inside each bin."""
    edges = np.asarray(distribution["edges"], dtype=np.float64)
    counts = np.asarray(distribution["counts"], dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
    return np.interp(x, edges, cumulative, left=0.0, right=1.0)


def ks_from_profile(distribution: Mapping[str, Any], live: Iterable[float]) -> float:
    """Kolmogorov-Smirnov distance sup |F_live - F_ref|, F_ref from the profile's histogram."""
    values = np.sort(np.asarray(list(live), dtype=np.float64))
    if values.size == 0 or not distribution.get("counts") or sum(distribution["counts"]) == 0:
        return 0.0
    ref = reference_cdf(distribution, values)
    above = np.arange(1, values.size + 1) / values.size
    below = np.arange(0, values.size) / values.size
    return float(max(np.max(np.abs(above - ref)), np.max(np.abs(ref - below))))


def category_psi(reference: Mapping[str, float], live: Iterable[Any], other: str = "\x00other") -> float:
    """PSI over categories: the reference's fractions, plus one bucket for everything else."""
    counts = Counter(live)
    total = sum(counts.values())
    if total == 0:
        return 0.0
    keys = [k for k in reference]
    ref = [float(reference[k]) for k in keys]
    cur = [counts.get(k, 0) for k in keys]
    ref.append(max(0.0, 1.0 - sum(ref)))
    cur.append(total - sum(cur))
    return psi(ref, cur)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def mmd_rbf(reference: np.ndarray, live: np.ndarray, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with an RBF kernel (median-heuristic bandwidth)."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(live, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return 0.0
    dxx, dyy, dxy = _sq_dists(x, x), _sq_dists(y, y), _sq_dists(x, y)
    if bandwidth is None:
        pooled = np.concatenate([dxx[np.triu_indices(len(x), 1)], dyy[np.triu_indices(len(y), 1)], dxy.ravel()])
        bandwidth = float(np.sqrt(0.5 * np.median(pooled))) or 1.0
    gamma = 1.0 / (2.0 * bandwidth ** 2)
    kxx, kyy, kxy = np.exp(-gamma * dxx), np.exp(-gamma * dyy), np.exp(-gamma * dxy)
    n, m = len(x), len(y)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(max(0.0, xx + yy - 2.0 * kxy.mean()))

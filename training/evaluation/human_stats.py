"""Statistics for human evaluation: Wilson win-rate intervals, mean-score intervals and rater agreement.

    wilson_interval(8, 10)                      # (0.490, 0.943)
    fleiss_kappa([[0, 14], [7, 7], ...])        # items x categories counts, same raters per item
    pairwise_kappa({"ann": {"r1": "a"}, "bob": {"r1": "a"}}, weights=None)
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sane at 0, n and small n)."""
    if trials <= 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = successes / trials
    denom = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean with a Student-t interval; n, sd included."""
    data = np.asarray(values, dtype=float)
    n = int(data.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan}
    mean = float(data.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    from scipy.stats import t

    sd = float(data.std(ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories table of how many raters chose each category."""
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        raise ValueError("need a non-empty items x categories table")
    raters = table.sum(axis=1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError("every item needs the same number (>= 2) of ratings")
    n = raters[0]
    p_category = table.sum(axis=0) / table.sum()
    p_item = ((table * table).sum(axis=1) - n) / (n * (n - 1))
    p_bar, p_expected = p_item.mean(), float((p_category ** 2).sum())
    if p_expected == 1.0:
        return 1.0 if p_bar == 1.0 else math.nan
    return float((p_bar - p_expected) / (1 - p_expected))


def pairwise_kappa(by_rater: Mapping[str, Mapping[str, object]], weights: str | None = None) -> float:
    """Mean Cohen's kappa over rater pairs on the items both rated (quadratic weights for ordinal scores)."""
    from sklearn.metrics import cohen_kappa_score

    values = []
    for a, b in itertools.combinations(sorted(by_rater), 2):
        common = sorted(set(by_rater[a]) & set(by_rater[b]))
        if len(common) < 2:
            continue
        left = [by_rater[a][i] for i in common]
        right = [by_rater[b][i] for i in common]
        if len(set(left) | set(right)) == 1:
            values.append(1.0)  # both raters gave one identical answer throughout: perfect, not undefined
            continue
        values.append(float(cohen_kappa_score(left, right, weights=weights)))
    return float(np.mean(values)) if values else math.nan


def percent_agreement(by_rater: Mapping[str, Mapping[str, object]]) -> float:
    """Share of rater pairs x common items where the two raters gave the same answer."""
    same = total = 0
    for a, b in itertools.combinations(sorted(by_rater), 2):
        for item in set(by_rater[a]) & set(by_rater[b]):
            total += 1
            same += by_rater[a][item] == by_rater[b][item]
    return same / total if total else math.nan

"""Pure metric functions for `tuneserve evaluate`: no models, no I/O, only lists in and numbers out.

Classification uses scikit-learn, BLEU uses sacrebleu, ROUGE uses rouge-score; SQuAD EM/F1,
expected calibration error, perplexity and the paired bootstrap are small enough to write here.

    classification_report(["a", "b"], ["a", "a"], confidences=[0.9, 0.6])
    squad_em_f1("The Eiffel Tower", ["eiffel tower"])      # (1.0, 1.0)
    paired_bootstrap(scores_a, scores_b, n_resamples=1000) # BootstrapResult(delta, low, high, p_value)
    slice_gap_bootstrap(scores, groups)                    # {"gap", "low", "high", "best", "worst", "groups"}
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = set(string.punctuation)


# --- classification -------------------------------------------------------------------------

def calibration_bins(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15) -> list[dict]:
    """Equal-width confidence bins (lo, hi]; each with count, mean confidence and accuracy."""
    conf = np.asarray(confidences, dtype=float)
    hits = np.asarray(correct, dtype=float)
    if conf.shape != hits.shape:
        raise ValueError("confidences and correct must have the same length")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": count,
                     "confidence": float(conf[mask].mean()) if count else None,
                     "accuracy": float(hits[mask].mean()) if count else None})
    return bins


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin share) * |accuracy - mean confidence| (Guo et al., 2017)."""
    total = len(confidences)
    if total == 0:
        return float("nan")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in calibration_bins(confidences, correct, n_bins) if b["count"]))


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None,
                          confidences: Sequence[float] | None = None, n_bins: int = 15) -> dict:
    """Accuracy, macro/micro/weighted P/R/F1, a per-class table, the confusion matrix and ECE."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("no examples to score")
    labels = list(labels) if labels else sorted(set(y_true) | set(y_pred))
    report: dict = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred)), "labels": labels}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        report[f"{average}_precision"], report[f"{average}_recall"], report[f"{average}_f1"] = float(p), float(r), float(f)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    report["per_class"] = [{"label": label, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(support[i])} for i, label in enumerate(labels)]
    report["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    if confidences is not None:
        correct = [t == p for t, p in zip(y_true, y_pred)]
        report["ece"] = expected_calibration_error(confidences, correct, n_bins)
        report["calibration_bins"] = calibration_bins(confidences, correct, n_bins)
    return report


# --- extractive QA (SQuAD) ------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, drop punctuation, drop articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Bag-of-tokens F1 after normalization, max over gold answers (empty vs empty counts as a match)."""
    pred = normalize_answer(prediction).split()
    return max((_token_f1(pred, normalize_answer(g).split()) for g in golds), default=0.0)


def squad_em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    return exact_match(prediction, golds), token_f1(prediction, golds)


# --- generation -----------------------------------------------------------------------------

def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no examples to score")


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU (sacrebleu, 0–100) plus sentence BLEU per example for bootstrapping."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    metric = sacrebleu.BLEU()
    corpus = metric.corpus_score(list(hypotheses), [list(references)])
    sentence = sacrebleu.BLEU(effective_order=True)
    per_sample = [sentence.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]
    return {"bleu": float(corpus.score), "signature": str(metric.get_signature()), "per_sample": per_sample}


def rouge(hypotheses: Sequence[str], references: Sequence[str], stemmer: bool = True) -> dict:
    """Mean ROUGE-1/2/L F-measure (rouge-score, 0–1) and the per-example values."""
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=stemmer)
    per_sample = {k: [] for k in kinds}
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)
        for k in kinds:
            per_sample[k].append(scores[k].fmeasure)
    return {**{k: float(np.mean(v)) for k, v in per_sample.items()}, "per_sample": per_sample}


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean token negative log-likelihood) from the summed NLL (nats) over `total_tokens` tokens."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return float(math.exp(total_nll / total_tokens))


# --- comparison -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BootstrapResult:
    """Mean of (b - a) with a percentile confidence interval and a two-sided bootstrap p-value."""

    mean_a: float
    mean_b: float
    delta: float
    low: float
    high: float
    confidence: float
    p_value: float
    n: int
    n_resamples: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], n_resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> BootstrapResult:
    """Paired bootstrap of the mean difference b - a over the same examples (resampled jointly)."""
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need equal lengths, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no paired examples to compare")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 256):  # chunks keep memory flat for large test sets
        stop = min(start + 256, n_resamples)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    observed = float(diff.mean())
    # share of resamples on the other side of zero, doubled (two-sided), floored at 1/n_resamples
    opposite = np.mean(means <= 0) if observed > 0 else np.mean(means >= 0)
    p_value = float(min(1.0, max(2 * opposite, 1.0 / n_resamples)))
    return BootstrapResult(float(a.mean()), float(b.mean()), observed, float(low), float(high), confidence,
                           p_value, int(a.size), n_resamples)


def _group_means(scores: np.ndarray, groups: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, len(groups)) resampled group means: each group's rows drawn with replacement within it."""
    return np.stack([scores[idx[rng.integers(0, idx.size, size=(n, idx.size))]].mean(axis=1) for idx in groups], axis=1)


def slice_gap_bootstrap(scores: Sequence[float], groups: Sequence[str], n_resamples: int = 1000,
                        confidence: float = 0.95, seed: int = 0,
                        scores_b: Sequence[float] | None = None) -> dict:
    """Worst-slice gap = best group's mean score minus worst group's, with a stratified bootstrap CI.

    Rows are resampled within each group (group sizes stay fixed) and the gap is recomputed on each
    resample, best and worst re-chosen every time. With `scores_b` (a second model's scores on the same
    rows) the same draws are applied to both, giving a paired interval of `gap_b - gap_a` as `delta`."""
    a = np.asarray(scores, dtype=float)
    labels = np.asarray([str(g) for g in groups])
    if a.ndim != 1 or a.shape != labels.shape:
        raise ValueError(f"scores and groups need equal lengths, got {a.shape} and {labels.shape}")
    names = sorted(set(labels.tolist()))
    if len(names) < 2:
        raise ValueError("a slice gap needs at least two groups")
    index = [np.flatnonzero(labels == name) for name in names]
    b = None if scores_b is None else np.asarray(scores_b, dtype=float)
    if b is not None and b.shape != a.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    gaps_a, gaps_b = np.empty(n_resamples), np.empty(n_resamples)
    for start in range(0, n_resamples, 256):
        stop = min(start + 256, n_resamples)
        state = rng.bit_generator.state
        means = _group_means(a, index, rng, stop - start)
        gaps_a[start:stop] = means.max(axis=1) - means.min(axis=1)
        if b is not None:  # replay the same draws on model B's scores
            rng.bit_generator.state = state
            means = _group_means(b, index, rng, stop - start)
            gaps_b[start:stop] = means.max(axis=1) - means.min(axis=1)
    alpha = (1 - confidence) / 2
    observed = {name: float(a[idx].mean()) for name, idx in zip(names, index)}
    best, worst = max(observed, key=observed.get), min(observed, key=observed.get)
    low, high = np.quantile(gaps_a, [alpha, 1 - alpha])
    out = {"gap": observed[best] - observed[worst], "low": float(low), "high": float(high), "best": best,
           "worst": worst, "groups": observed, "confidence": confidence, "n_resamples": n_resamples}
    if b is not None:
        observed_b = [float(b[idx].mean()) for idx in index]
        gap_b = max(observed_b) - min(observed_b)
        diff = gaps_b - gaps_a
        d_low, d_high = np.quantile(diff, [alpha, 1 - alpha])
        out["paired"] = {"gap_b": gap_b, "delta": gap_b - out["gap"], "low": float(d_low), "high": float(d_high)}
    return out

"""PNG plots for evaluation reports (matplotlib, headless Agg backend).

    confusion_matrix_png(matrix, labels, "confusion_matrix.png")
    reliability_png(bins, ece, "reliability.png")
    histogram_png({"f1": [...]}, "scores.png", "per-example F1")
    delta_png(rows, "compare.png")        # bootstrap deltas with their confidence intervals
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def confusion_matrix_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> Path:
    import numpy as np

    plt = _pyplot()
    data = np.asarray(matrix, dtype=float)
    n = len(labels)
    size = min(4 + 0.22 * n, 22)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = data.sum(axis=1, keepdims=True)
    normalized = np.divide(data, rows, out=np.zeros_like(data), where=rows > 0)
    image = ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    ticks = range(n)
    font = 8 if n <= 30 else 5
    ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if data[i, j]:
                    ax.text(j, i, int(data[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if normalized[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix (row-normalized colour, counts)")
    return _save(fig, path)


def reliability_png(bins: list[dict[str, Any]], ece: float, path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    filled = [b for b in bins if b["count"]]
    ax.bar([b["lo"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.bar([b["lo"] for b in filled], [abs(b["confidence"] - b["accuracy"]) for b in filled],
           bottom=[min(b["accuracy"], b["confidence"]) for b in filled], width=width, align="edge", color="red",
           alpha=0.3, hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE = {ece:.3f})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def histogram_png(series: dict[str, Sequence[float]], path: str | Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in series.items():
        ax.hist([v for v in values if v == v], bins=20, alpha=0.55, label=name)
    ax.set_title(title)
    ax.set_ylabel("examples")
    ax.legend()
    return _save(fig, path)


def delta_png(rows: list[dict[str, Any]], path: str | Path, title: str = "B - A (paired bootstrap CI)") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(rows)))
    names = [r["metric"] for r in rows]
    deltas = [r["delta"] for r in rows]
    errors = [[r["delta"] - r["low"] for r in rows], [r["high"] - r["delta"] for r in rows]]
    ax.errorbar(deltas, range(len(rows)), xerr=errors, fmt="o", capsize=4)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_yticks(range(len(rows)), names)
    ax.set_title(title)
    return _save(fig, path)

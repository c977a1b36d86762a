"""Side-by-side comparison of two evaluation results on the same examples, with paired bootstrap CIs.

Headline metrics are shown with their delta (B - A); every per-example score the two results
share (accuracy, EM, F1, sentence BLEU, ROUGE, NLL per token) gets a paired bootstrap
confidence interval of the mean difference; each declared slice's worst-slice gap gets a paired
interval of gap B - gap A (`slice_gaps`). Both results must come from the same rows (same
data fingerprint), otherwise pairing is meaningless and a DataError is raised.

    table = compare_results(result_a, result_b, n_resamples=1000)
    write_compare_report(table, Path("eval-compare/a-vs-b"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.evaluation import plots
from training.evaluation.metrics import paired_bootstrap, slice_gap_bootstrap
from training.evaluation.render import html_image, html_notes, html_page, html_table, md_table, write_json, write_text
from training.evaluation.report import EvalResult

COMPARE_NAME = "compare_report"


def compare_results(a: EvalResult, b: EvalResult, n_resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, Any]:
    if a.task != b.task:
        raise DataError(f"cannot compare a {a.task} evaluation with a {b.task} evaluation", "evaluate both on the same data")
    if a.data.get("fingerprint") != b.data.get("fingerprint"):
        raise DataError("the two evaluations used different rows (data fingerprints differ)",
                        "evaluate both models on the same data, split, limit and seed")
    headline = [{"metric": k, "a": a.metrics[k], "b": b.metrics[k], "delta": b.metrics[k] - a.metrics[k]}
                for k in a.metrics if k in b.metrics]
    paired = []
    for metric in a.per_sample:
        if metric not in b.per_sample:
            continue
        pairs = [(x, y) for x, y in zip(a.per_sample[metric], b.per_sample[metric]) if x == x and y == y]
        if not pairs:
            continue
        boot = paired_bootstrap([x for x, _ in pairs], [y for _, y in pairs], n_resamples, confidence, seed)
        paired.append({"metric": metric, **boot.to_dict()})
    return {"task": a.task, "a": {"name": a.name, "model": a.model, "metrics": a.metrics},
            "b": {"name": b.name, "model": b.model, "metrics": b.metrics}, "data": a.data,
            "headline": headline, "paired_bootstrap": paired,
            "slice_gaps": paired_slice_gaps(a, b, n_resamples, confidence, seed)}


def paired_slice_gaps(a: EvalResult, b: EvalResult, n_resamples: int, confidence: float, seed: int) -> list[dict]:
    """Worst-slice gap of A and B on the same rows, with a paired bootstrap interval of gap B - gap A."""
    metric = (a.fairness or {}).get("metric")
    if not metric or metric not in b.per_sample or len(a.samples) != len(a.per_sample[metric]):
        return []
    out = []
    for entry in a.fairness["slices"]:
        if "gap" not in entry:
            continue
        groups = [str((s.get("slices") or {}).get(entry["slice"])) for s in a.samples]
        boot = slice_gap_bootstrap(a.per_sample[metric], groups, n_resamples, confidence, seed,
                                   scores_b=b.per_sample[metric])
        out.append({"slice": entry["slice"], "metric": metric, "gap_a": boot["gap"], **boot["paired"]})
    return out


def _paired_rows(table: dict[str, Any]) -> list[list[Any]]:
    return [[r["metric"], r["mean_a"], r["mean_b"], r["delta"], r["low"], r["high"], r["p_value"], r["n"]]
            for r in table["paired_bootstrap"]]


PAIRED_HEADERS = ["metric (per example)", "mean A", "mean B", "delta B-A", "CI low", "CI high", "p", "n"]


def write_compare_report(table: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    title = f"Compare: A = {table['a']['name']}, B = {table['b']['name']} ({table['task']})"
    headline = [[r["metric"], r["a"], r["b"], r["delta"]] for r in table["headline"]]
    level = table["paired_bootstrap"][0]["confidence"] if table["paired_bootstrap"] else 0.95
    note = (f"CI: {level:.0%} paired bootstrap percentile interval of the mean per-example difference "
            "(resampling examples jointly for both models).")
    paths = {"json": write_json(out / f"{COMPARE_NAME}.json", table)}
    sections = [("Headline metrics", html_table(["metric", "A", "B", "delta B-A"], headline)),
                ("Paired bootstrap", html_table(PAIRED_HEADERS, _paired_rows(table)) + html_notes([note]))]
    md = [f"# {title}", "", "## Headline metrics", md_table(["metric", "A", "B", "delta B-A"], headline), "",
          "## Paired bootstrap", md_table(PAIRED_HEADERS, _paired_rows(table)), "", note]
    if table.get("slice_gaps"):
        gap_rows = [[r["slice"], r["metric"], r["gap_a"], r["gap_b"], r["delta"], r["low"], r["high"]]
                    for r in table["slice_gaps"]]
        headers = ["slice", "metric", "gap A", "gap B", "delta B-A", "CI low", "CI high"]
        sections.append(("Worst-slice gap (paired bootstrap)", html_table(headers, gap_rows)))
        md += ["", "## Worst-slice gap (paired bootstrap)", md_table(headers, gap_rows)]
    if table["paired_bootstrap"]:
        paths["png"] = plots.delta_png(table["paired_bootstrap"], out / "compare.png")
        sections.append(("Deltas", html_image(paths["png"])))
        md += ["", "![deltas](compare.png)"]
    paths["md"] = write_text(out / f"{COMPARE_NAME}.md", "\n".join(md) + "\n")
    paths["html"] = write_text(out / f"{COMPARE_NAME}.html", html_page(title, sections))
    return paths

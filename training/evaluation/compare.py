"""Side-by-side comparison of two evaluation results on the same examples, with paired bootstrap CIs.

Headline metrics are shown with their delta (B - A); every per-example score the two results
share (accuracy, EM, F1, sentence BLEU, ROUGE, NLL per token) gets a paired bootstrap
confidence interval of the mean difference. Both results must come from the same rows (same
data fingerprint), otherwise pairing is meaningless and a DataError is raised.

    table = compare_results(result_a, result_b, n_resamples=1000)
    write_compare_report(table, Path("eval-compare/a-vs-b"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.evaluation import plots
from training.evaluation.metrics import paired_bootstrap
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
            "headline": headline, "paired_bootstrap": paired}


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
    if table["paired_bootstrap"]:
        paths["png"] = plots.delta_png(table["paired_bootstrap"], out / "compare.png")
        sections.append(("Deltas", html_image(paths["png"])))
        md += ["", "![deltas](compare.png)"]
    paths["md"] = write_text(out / f"{COMPARE_NAME}.md", "\n".join(md) + "\n")
    paths["html"] = write_text(out / f"{COMPARE_NAME}.html", html_page(title, sections))
    return paths

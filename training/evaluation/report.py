"""Evaluation results on disk: `eval_report.json`, `.md`, `.html` (plots embedded), `samples.jsonl` and PNGs.

`eval_report.json` holds everything needed to compare runs later (metrics, details,
per-example scores, data fingerprint, model facts, and `fairness`: the metric per declared
slice with the worst-slice gap and its flags); `samples.jsonl` one record per example.

    result = EvalResult(...)
    write_eval_report(result, Path("artifacts/my-adapter.eval"))
    again = read_eval_report(Path("artifacts/my-adapter.eval"))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.evaluation import plots
from training.evaluation.fairness import GAP_HEADERS, GROUP_HEADERS, gap_rows, group_rows
from training.evaluation.render import (
    html_image,
    html_notes,
    html_page,
    html_table,
    md_table,
    write_json,
    write_jsonl,
    write_text,
)

REPORT_NAME = "eval_report"
SAMPLES_NAME = "samples.jsonl"
SCHEMA = "tuneserve.eval/1"


@dataclass
class EvalResult:
    task: str
    model: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    metrics: dict[str, float]
    per_sample: dict[str, list[float]]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    created_at: str = ""
    plots: list[str] = field(default_factory=list)
    tracking: dict[str, Any] = field(default_factory=dict)
    fairness: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return str(self.model.get("name") or self.model.get("model") or self.model.get("path") or "model")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("samples")
        return {"schema": SCHEMA, **data}


def _plots(result: EvalResult, out: Path) -> list[str]:
    made = []
    details = result.details
    if "confusion_matrix" in details:
        made.append(plots.confusion_matrix_png(details["confusion_matrix"], details["labels"],
                                               out / "confusion_matrix.png").name)
    if details.get("calibration_bins"):
        made.append(plots.reliability_png(details["calibration_bins"], result.metrics.get("ece", float("nan")),
                                          out / "reliability.png").name)
    continuous = {k: v for k, v in result.per_sample.items() if k not in ("accuracy", "exact_match")}
    if continuous:
        made.append(plots.histogram_png(continuous, out / "score_distribution.png", "per-example scores").name)
    return made


def _metric_rows(result: EvalResult) -> list[list[Any]]:
    return [[k, v] for k, v in result.metrics.items()]


def _per_class_rows(result: EvalResult) -> list[list[Any]]:
    return [[r["label"], r["precision"], r["recall"], r["f1"], r["support"]] for r in result.details.get("per_class", [])]


def _example_rows(result: EvalResult, limit: int = 20) -> tuple[list[str], list[list[Any]]]:
    if not result.samples:
        return [], []
    keys = [k for k in result.samples[0] if k not in ("raw", "context")][:6]
    rows = [[str(s.get(k))[:160] if isinstance(s.get(k), (str, list)) else s.get(k) for k in keys]
            for s in result.samples[:limit]]
    return keys, rows


def _fairness_sections(result: EvalResult) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, headers, rows) of the slice tables; none when the data declared no slices."""
    report = result.fairness
    if not report:
        return []
    sections = [("Slices", [*GROUP_HEADERS, report["metric"]], group_rows(report))]
    if gap_rows(report):
        sections.append((f"Worst-slice gap (threshold {report['threshold']})", GAP_HEADERS, gap_rows(report)))
    return sections


def render_markdown(result: EvalResult) -> str:
    parts = [f"# Evaluation: {result.name} on {result.task}", "",
             f"Data: `{result.data.get('source')}` ({result.data.get('rows')} rows, fingerprint "
             f"`{str(result.data.get('fingerprint'))[:12]}`); wall time {result.wall_time_s:.1f} s.", "",
             "## Metrics", md_table(["metric", "value"], _metric_rows(result)), ""]
    if result.details.get("per_class"):
        parts += ["## Per class", md_table(["label", "precision", "recall", "f1", "support"], _per_class_rows(result)), ""]
    for title, headers, rows in _fairness_sections(result):
        parts += [f"## {title}", md_table(headers, rows), ""]
    if result.fairness:
        parts += [f"_{result.fairness['definition']}_", "",
                  *[f"- **flag**: {flag}" for flag in result.fairness["flags"]], ""]
    parts += [f"![{p}]({p})" for p in result.plots]
    keys, rows = _example_rows(result)
    if rows:
        parts += ["", "## First examples", md_table(keys, rows)]
    if result.notes:
        parts += ["", "## Notes", *[f"- {n}" for n in result.notes]]
    return "\n".join(parts) + "\n"


def render_html(result: EvalResult, out: Path) -> str:
    sections = [("Run", html_table(["field", "value"], [["model", json.dumps(result.model)],
                                                         ["data", json.dumps(result.data)],
                                                         ["settings", json.dumps(result.settings)],
                                                         ["wall time (s)", result.wall_time_s]])),
                ("Metrics", html_table(["metric", "value"], _metric_rows(result)))]
    if result.details.get("per_class"):
        sections.append(("Per class", html_table(["label", "precision", "recall", "f1", "support"],
                                                 _per_class_rows(result))))
    sections += [(title, html_table(headers, rows)) for title, headers, rows in _fairness_sections(result)]
    if result.fairness:
        sections.append(("Slice flags", html_notes([result.fairness["definition"],
                                                    *[f"flag: {f}" for f in result.fairness["flags"]]])))
    sections += [(p.removesuffix(".png").replace("_", " ").capitalize(), html_image(out / p)) for p in result.plots]
    keys, rows = _example_rows(result)
    if rows:
        sections.append(("First examples", html_table(keys, rows)))
    if result.notes:
        sections.append(("Notes", html_notes(result.notes)))
    return html_page(f"Evaluation: {result.name} on {result.task}", sections)


def write_eval_report(result: EvalResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    result.plots = _plots(result, out)
    paths = {"samples": write_jsonl(out / SAMPLES_NAME, result.samples),
             "md": write_text(out / f"{REPORT_NAME}.md", render_markdown(result)),
             "html": write_text(out / f"{REPORT_NAME}.html", render_html(result, out)),
             "json": write_json(out / f"{REPORT_NAME}.json", result.to_json())}
    paths.update({p: out / p for p in result.plots})
    return paths


def read_eval_report(path: Path) -> EvalResult:
    """Load a report written by `write_eval_report` (a directory or its eval_report.json)."""
    path = Path(path)
    file = path / f"{REPORT_NAME}.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read evaluation report {file} ({exc})", "run tuneserve evaluate first") from None
    if data.pop("schema", None) != SCHEMA:
        raise DataError(f"{file} is not a tuneserve evaluation report", f"expected schema {SCHEMA}")
    samples_file = file.parent / SAMPLES_NAME
    samples = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines()] \
        if samples_file.is_file() else []
    return EvalResult(**data, samples=samples)

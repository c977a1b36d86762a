"""Annotation round trip: export rows that need labels, import labels, merge annotators, agreement.

Export picks rows that are unlabeled, or the least confident under a scorer (registry:
`tfidf` trains TF-IDF + logistic regression on the labeled rows and scores out of fold;
`predictions` reads `{row_id|text, confidence}` JSONL from any model), and writes CSV, JSONL
or Label Studio import JSON. Each row carries a stable `row_id`. Import reads Label Studio
export JSON, CSV or JSONL (`row_id`/`text`, `label`, `annotator`), merges annotators by
majority vote, lists conflicts, and reports Cohen's kappa (per pair) and Fleiss' kappa.

    picked = select_rows(rows, spec, "uncertain", limit=100)
    export_rows(picked, spec, "to_label.json", "labelstudio", labels)
    merged, report = merge_annotations(read_annotations(["ls_export.json", "bob.csv"]))
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

from training.artifact.errors import ConfigError, DataError
from training.data.dedup import normalize_key
from training.data.prepared import canonical_json, write_jsonl
from training.data.registry import registrar
from training.data.tasks import Row, TaskSpec


def row_id(data: dict[str, Any], spec: TaskSpec) -> str:
    content = {k: v for k, v in data.items() if k != spec.label_field}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()[:16]


Scorer = Callable[[list[Row], list[Row], TaskSpec, str | None], list[float]]
SCORERS: dict[str, Scorer] = {}
scorer = registrar(SCORERS)


@scorer("tfidf")
def tfidf_confidence(labeled: list[Row], candidates: list[Row], spec: TaskSpec, _: str | None) -> list[float]:
    """Max class probability; labeled rows are scored out of fold so they are not memorised."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    y = [r.data[spec.label_field] for r in labeled]
    counts = Counter(y)
    if len(counts) < 2 or min(counts.values()) < 2:
        raise DataError("the tfidf scorer needs at least two labels with two labeled rows each",
                        "label a few rows first, or use --strategy unlabeled")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x_lab = vec.fit_transform([spec.text(r.data) for r in labeled])
    model = LogisticRegression(max_iter=300)
    out_of_fold = cross_val_predict(model, x_lab, y, cv=min(3, min(counts.values())), method="predict_proba").max(axis=1)
    conf = {id(r): float(c) for r, c in zip(labeled, out_of_fold)}
    unlabeled = [r for r in candidates if id(r) not in conf]
    if unlabeled:
        model.fit(x_lab, y)
        probs = model.predict_proba(vec.transform([spec.text(r.data) for r in unlabeled])).max(axis=1)
        conf.update({id(r): float(c) for r, c in zip(unlabeled, probs)})
    return [conf[id(r)] for r in candidates]


@scorer("predictions")
def file_confidence(labeled: list[Row], candidates: list[Row], spec: TaskSpec, path: str | None) -> list[float]:
    if not path:
        raise ConfigError("scorer 'predictions' needs a predictions file", "pass --predictions preds.jsonl")
    by_key: dict[str, float] = {}
    for rec in _read_records(Path(path)):
        key = rec.get("row_id") or normalize_key(str(rec.get("text", "")))
        by_key[key] = float(rec["confidence"])
    return [by_key.get(row_id(r.data, spec), by_key.get(normalize_key(spec.text(r.data)), 1.0)) for r in candidates]


def select_rows(rows: list[Row], spec: TaskSpec, strategy: str, limit: int | None = None,
                scorer_name: str = "tfidf", predictions: str | None = None) -> list[tuple[Row, float | None]]:
    """Rows to label: `unlabeled` (label missing) or `uncertain` (lowest confidence first)."""
    if spec.label_field is None:
        raise ConfigError(f"task {spec.name} has no labels to annotate", "annotation export needs task=classification")
    unlabeled = [r for r in rows if r.data.get(spec.label_field) is None]
    if strategy == "unlabeled":
        picked: list[tuple[Row, float | None]] = [(r, None) for r in unlabeled]
    elif strategy == "uncertain":
        if scorer_name not in SCORERS:
            raise ConfigError(f"unknown scorer {scorer_name!r}", f"use one of {sorted(SCORERS)}")
        labeled = [r for r in rows if r.data.get(spec.label_field) is not None]
        conf = SCORERS[scorer_name](labeled, rows, spec, predictions)
        picked = sorted(zip(rows, conf), key=lambda rc: rc[1])
    else:
        raise ConfigError(f"unknown strategy {strategy!r}", "use unlabeled or uncertain")
    return picked[:limit] if limit else picked


def _flat(row: Row, spec: TaskSpec, confidence: float | None) -> dict[str, Any]:
    out = {"row_id": row_id(row.data, spec), **{k: v for k, v in row.data.items()}}
    out["label"] = out.get(spec.label_field) or ""
    if confidence is not None:
        out["confidence"] = round(confidence, 4)
    return out


def _label_studio(items: list[dict[str, Any]], labels: list[str] | None) -> list[dict[str, Any]]:
    tasks = []
    for i, item in enumerate(items, start=1):
        task: dict[str, Any] = {"id": i, "data": {k: v for k, v in item.items() if k not in ("label", "confidence")}}
        if item.get("label") and labels:
            task["predictions"] = [{"model_version": "tuneserve", "score": item.get("confidence"), "result": [
                {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [item["label"]]}}]}]
        tasks.append(task)
    return tasks


def export_rows(picked: list[tuple[Row, float | None]], spec: TaskSpec, path: str | Path, fmt: str,
                labels: list[str] | None = None) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [_flat(r, spec, c) for r, c in picked]
    if fmt == "jsonl":
        write_jsonl(path, items)
    elif fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(items[0]) if items else ["row_id", "label"])
            writer.writeheader()
            writer.writerows(items)
    elif fmt == "labelstudio":
        path.write_text(json.dumps(_label_studio(items, labels), indent=1, ensure_ascii=False), encoding="utf-8")
    else:
        raise ConfigError(f"unknown export format {fmt!r}", "use csv, jsonl or labelstudio")
    return len(items)


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist", "check the path")
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}", "export the project again from Label Studio") from None
    if not isinstance(value, list):
        raise DataError(f"{path} must be a JSON list of tasks", "use Label Studio's JSON export")
    return value


def _ls_votes(task: dict[str, Any]) -> list[tuple[str, str]]:
    votes = []
    for ann in task.get("annotations") or []:
        if ann.get("was_cancelled"):
            continue
        who = ann.get("completed_by")
        who = who.get("email") or who.get("id") if isinstance(who, dict) else who
        for res in ann.get("result") or []:
            choices = (res.get("value") or {}).get("choices")
            if choices:
                votes.append((str(who), str(choices[0])))
                break
    return votes


Vote = tuple[str, str, str]  # (item key, annotator, label)


def read_annotations(paths: list[str]) -> tuple[list[Vote], dict[str, str]]:
    """All votes from all files, plus item key -> text (item key is row_id, else normalized text)."""
    votes: list[Vote] = []
    texts: dict[str, str] = {}
    for name in paths:
        path = Path(name)
        for rec in _read_records(path):
            if "annotations" in rec or "data" in rec:
                data = rec.get("data") or {}
                key = data.get("row_id") or normalize_key(str(data.get("text", "")))
                texts.setdefault(key, str(data.get("text", "")))
                votes.extend((key, who, label) for who, label in _ls_votes(rec))
            elif str(rec.get("label") or "").strip():
                key = rec.get("row_id") or normalize_key(str(rec.get("text", "")))
                texts.setdefault(key, str(rec.get("text", "")))
                votes.append((key, str(rec.get("annotator") or path.stem), str(rec["label"]).strip()))
    if not votes:
        raise DataError(f"no labels found in {paths}", "give Label Studio export JSON or CSV/JSONL with a label column")
    return votes, texts


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    return 1.0 if expected == 1 else round((observed - expected) / (1 - expected), 4)


def fleiss_kappa(items: list[list[str]]) -> float | None:
    """Fleiss' kappa over items that all have the same number (>= 2) of ratings."""
    if not items or len(items[0]) < 2:
        return None
    n, m = len(items), len(items[0])
    totals: Counter = Counter()
    p_items = 0.0
    for ratings in items:
        counts = Counter(ratings)
        totals.update(counts)
        p_items += (sum(c * c for c in counts.values()) - m) / (m * (m - 1))
    p_bar = p_items / n
    p_e = sum((c / (n * m)) ** 2 for c in totals.values())
    return 1.0 if p_e == 1 else round((p_bar - p_e) / (1 - p_e), 4)


def merge_annotations(votes: list[Vote], on_conflict: str = "drop") -> tuple[dict[str, str], dict[str, Any]]:
    """Majority label per item; ties are conflicts (dropped, or the first vote with `first`)."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for key, who, label in votes:
        by_item[key].setdefault(who, label)
    merged: dict[str, str] = {}
    conflicts: list[dict[str, Any]] = []
    disagreements = 0
    for key, ballot in by_item.items():
        ranked = Counter(ballot.values()).most_common()
        disagreements += len(ranked) > 1
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            conflicts.append({"item": key, "votes": ballot})
            if on_conflict == "first":
                merged[key] = next(iter(ballot.values()))
            continue
        merged[key] = ranked[0][0]
    annotators = sorted({who for _, who, _ in votes})
    pairs = {}
    for a, b in combinations(annotators, 2):
        common = [k for k, ballot in by_item.items() if a in ballot and b in ballot]
        pairs[f"{a}|{b}"] = {"items": len(common), "cohen_kappa": cohen_kappa(
            [by_item[k][a] for k in common], [by_item[k][b] for k in common])}
    sizes = Counter(len(b) for b in by_item.values() if len(b) >= 2)
    modal = sizes.most_common(1)[0][0] if sizes else 0
    fleiss_items = [list(b.values()) for b in by_item.values() if len(b) == modal]
    report = {"items": len(by_item), "annotators": annotators, "votes": len(votes), "merged": len(merged),
              "disagreements": disagreements, "conflicts": len(conflicts), "conflict_examples": conflicts[:10],
              "cohen_kappa": pairs, "fleiss_kappa": fleiss_kappa(fleiss_items), "fleiss_items": len(fleiss_items)}
    return merged, report


def apply_annotations(rows: list[Row], cfg: Any, spec: TaskSpec) -> tuple[list[Row], dict[str, Any]]:
    """Set labels from annotation files (by row_id, else text); drop rows left without a label."""
    votes, _ = read_annotations(cfg.files)
    merged, report = merge_annotations(votes, cfg.on_conflict)
    relabeled = filled = 0
    kept = []
    for row in rows:
        label = merged.get(row_id(row.data, spec)) or merged.get(normalize_key(spec.text(row.data)))
        current = row.data.get(spec.label_field)
        if label is not None and label != current:
            filled += current is None
            relabeled += current is not None
            row.data[spec.label_field] = label
        if row.data.get(spec.label_field) is not None:
            kept.append(row)
    report.update(filled=filled, relabeled=relabeled, dropped_unlabeled=len(rows) - len(kept))
    return kept, report

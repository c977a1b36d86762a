"""Read filled human-evaluation sheets, un-blind them with the key and analyse them.

Ratings files (CSV or JSONL; one per rater or combined) carry `row_id`, `rater`,
`preference` (a position letter or `tie`) and `score_<position>_<criterion>` (1–5). The key
maps positions back to models. Reported: pairwise win rate (ties excluded) with a Wilson
interval plus tie share, mean score per model and criterion with a t interval, and
inter-rater agreement (Fleiss' kappa and mean pairwise Cohen's kappa on un-blinded
preferences; quadratic-weighted Cohen's kappa on scores).

    report, out = import_ratings(Path("human-eval.key/key.json"), [Path("ratings-ann.csv")])
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.evaluation.human_format import KEY_SCHEMA, read_records
from training.evaluation.human_stats import (
    fleiss_kappa,
    mean_interval,
    pairwise_kappa,
    percent_agreement,
    wilson_interval,
)
from training.evaluation.render import html_notes, html_page, html_table, md_table, write_json, write_jsonl, write_text

TIE = "tie"
REPORT_NAME = "human_eval_report"


def read_key(path: Path) -> dict[str, Any]:
    try:
        key = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the key file {path} ({exc})", "pass the key.json written by human-eval export") from None
    if key.get("schema") != KEY_SCHEMA:
        raise DataError(f"{path} is not a human-eval key", "pass the key.json written by human-eval export")
    return key


def unblind(key: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """Ratings of one file with positions replaced by model names; malformed values are errors."""
    rows = key["rows"]
    out = []
    for line, rec in enumerate(read_records(path), start=2):
        where = f"{path}:{line}"
        sheet = str(rec.get("sheet_id") or key["sheet_id"])
        if sheet != key["sheet_id"]:
            raise DataError(f"{where} belongs to sheet {sheet}, the key is for sheet {key['sheet_id']}",
                            "use the key written together with this sheet")
        row_id = str(rec.get("row_id") or "")
        if row_id not in rows:
            raise DataError(f"{where}: unknown row_id {row_id!r}", "ratings must come from this sheet")
        mapping = rows[row_id]["positions"]
        pref = str(rec.get("preference") or "").strip()
        if pref and pref.lower() != TIE and pref.upper() not in mapping:
            raise DataError(f"{where}: preference {pref!r} is not one of {[*mapping, TIE]}", "fix the rating")
        winner = None if not pref else TIE if pref.lower() == TIE else mapping[pref.upper()]
        scores: dict[str, dict[str, int]] = defaultdict(dict)
        for letter, model in mapping.items():
            for criterion in key["criteria"]:
                raw = rec.get(f"score_{letter}_{criterion}")
                if raw in (None, ""):
                    continue
                try:
                    value = int(float(raw))
                except (TypeError, ValueError):
                    value = 0
                if not 1 <= value <= 5 or float(raw) != value:
                    raise DataError(f"{where}: score_{letter}_{criterion} = {raw!r} is not an integer 1-5", "fix the rating")
                scores[model][criterion] = value
        rater = str(rec.get("rater") or "").strip() or path.stem
        out.append({"row_id": row_id, "prompt_id": rows[row_id]["prompt_id"], "rater": rater, "winner": winner,
                    "scores": dict(scores), "comment": rec.get("comment") or ""})
    return out


def pairwise_wins(ratings: list[dict[str, Any]], models: list[str], confidence: float) -> list[dict[str, Any]]:
    result = []
    for a, b in itertools.combinations(models, 2):
        counts = Counter(r["winner"] for r in ratings if r["winner"] in (a, b, TIE))
        decided = counts[a] + counts[b]
        low, high = wilson_interval(counts[a], decided, confidence)
        total = decided + counts[TIE]
        result.append({"a": a, "b": b, "wins_a": counts[a], "wins_b": counts[b], "ties": counts[TIE],
                       "win_rate": counts[a] / decided if decided else math.nan, "low": low, "high": high,
                       "tie_rate": counts[TIE] / total if total else math.nan})
    return result


def mean_scores(ratings: list[dict[str, Any]], models: list[str], criteria: list[str],
                confidence: float) -> dict[str, dict[str, dict[str, float]]]:
    return {m: {c: mean_interval([r["scores"][m][c] for r in ratings if c in r["scores"].get(m, {})], confidence)
                for c in criteria} for m in models}


def agreement(ratings: list[dict[str, Any]], models: list[str], criteria: list[str]) -> dict[str, Any]:
    prefs: dict[str, dict[str, str]] = defaultdict(dict)
    scores: dict[str, dict[str, int]] = defaultdict(dict)
    for r in ratings:
        if r["winner"]:
            prefs[r["rater"]][r["row_id"]] = r["winner"]
        for model, crit in r["scores"].items():
            for c, v in crit.items():
                scores[r["rater"]][f"{r['row_id']}|{model}|{c}"] = v
    raters = sorted(prefs)
    result: dict[str, Any] = {"raters": raters}
    if len(raters) < 2:
        result["note"] = "agreement needs at least two raters"
        return result
    categories = [*models, TIE]
    shared = set.intersection(*(set(prefs[r]) for r in raters))
    if shared:
        table = [[sum(prefs[r][item] == cat for r in raters) for cat in categories] for item in sorted(shared)]
        result["preference_fleiss_kappa"] = fleiss_kappa(table)
        result["items_rated_by_all"] = len(shared)
    result["preference_cohen_kappa"] = pairwise_kappa(prefs)
    result["preference_percent_agreement"] = percent_agreement(prefs)
    if scores:
        result["score_weighted_kappa"] = pairwise_kappa(scores, weights="quadratic")
    return result


def analyse(key: dict[str, Any], ratings: list[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    models, criteria = key["models"], key["criteria"]
    return {"sheet_id": key["sheet_id"], "models": models, "criteria": criteria, "ratings": len(ratings),
            "raters": len({r["rater"] for r in ratings}), "rows": len({r["row_id"] for r in ratings}),
            "confidence": confidence,
            "pairwise": pairwise_wins(ratings, models, confidence),
            "scores": mean_scores(ratings, models, criteria, confidence),
            "agreement": agreement(ratings, models, criteria)}


def _tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    level = f"{report['confidence']:.0%}"
    wins = [[p["a"], p["b"], p["wins_a"], p["wins_b"], p["ties"], p["win_rate"], p["low"], p["high"], p["tie_rate"]]
            for p in report["pairwise"]]
    scores = [[m, c, s["n"], s["mean"], s["low"], s["high"]] for m, crit in report["scores"].items() for c, s in crit.items()]
    agree = [[k, v] for k, v in report["agreement"].items() if k != "raters"]
    return [("Pairwise preference (win rate of A, ties excluded)",
             ["A", "B", "A wins", "B wins", "ties", "win rate", f"{level} low", f"{level} high", "tie share"], wins),
            ("Mean scores (1-5)", ["model", "criterion", "n", "mean", f"{level} low", f"{level} high"], scores),
            ("Inter-rater agreement", ["measure", "value"], agree)]


def write_human_report(report: dict[str, Any], ratings: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    tables = _tables(report)
    note = (f"{report['ratings']} ratings by {report['raters']} raters on {report['rows']} rows. Win-rate intervals "
            "are Wilson score intervals treating each rating as independent.")
    md = [f"# Human evaluation ({', '.join(report['models'])})", "", note]
    for title, headers, rows in tables:
        md += ["", f"## {title}", md_table(headers, rows)]
    return {"json": write_json(out / f"{REPORT_NAME}.json", report),
            "ratings": write_jsonl(out / "unblinded_ratings.jsonl", ratings),
            "md": write_text(out / f"{REPORT_NAME}.md", "\n".join(md) + "\n"),
            "html": write_text(out / f"{REPORT_NAME}.html", html_page(
                "Human evaluation", [("Summary", html_notes([note])),
                                     *[(t, html_table(h, r)) for t, h, r in tables]]))}


def import_ratings(key_path: Path, rating_files: list[Path], out: Path | None = None,
                   confidence: float = 0.95) -> tuple[dict[str, Any], Path]:
    key = read_key(key_path)
    ratings = [r for path in rating_files for r in unblind(key, Path(path))]
    if not ratings:
        raise DataError("the ratings files hold no ratings", "fill the sheet first (sheet.html -> Download ratings)")
    report = analyse(key, ratings, confidence)
    out = Path(out) if out else Path(key_path).parent
    write_human_report(report, ratings, out)
    return report, out

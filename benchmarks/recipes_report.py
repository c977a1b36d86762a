"""The report of benchmarks/recipes.py (issue 23): the per-dataset parts combined into goal rows and tables.

Reads benchmarks/results/recipes/<dataset>.json (one per `recipes.py --dataset` run) and writes
benchmarks/results/recipes.json + recipes.md with Q6, Q7 and the rows that inform the recipe's rules:

    python benchmarks/recipes.py --report
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = RESULTS / "recipes"
SCORING = "right-padded"  # recipe arms scored after commit 5c8264c (the loader's padding fix)
STALE_SCORING = "left-padded (before 5c8264c)"


def dataset_means(per_dataset: dict[str, list[float]]) -> dict:
    """{"value": each dataset's mean of its points, "panel_mean": the mean of those means}, rounded to 0.01."""
    means = {d: round(sum(g) / len(g), 2) for d, g in per_dataset.items()}
    return {"value": means, "panel_mean": round(sum(means.values()) / len(means), 2) if means else None}


def scoring_of(arm: str, record: dict) -> str:
    """How an arm's test rows were scored: the plain loop pads right in its own loop; recipe arms scored before
    commit 5c8264c went through a left-padding loader (MiniLM's absolute positions shifted: understated)."""
    return SCORING if arm == "plain" else record.get("scoring", STALE_SCORING)


def _points(part: dict, a: str, b: str) -> float | None:
    arms = part["arms"]
    if a not in arms or b not in arms or scoring_of(a, arms[a]) != scoring_of(b, arms[b]):
        return None
    return round((arms[a]["accuracy"] - arms[b]["accuracy"]) * 100, 2)


def goals(parts: list[dict]) -> list[dict]:
    def gap(a: str, b: str) -> list[float]:
        return [d for d in (_points(p, a, b) for p in parts) if d is not None]

    def worst(gaps: list[float]):
        return (min(gaps) >= 0) if gaps else "not measured"

    def informs(goal_id: str, a: str, b: str, measure: str, goal: str) -> dict:
        gaps = gap(a, b)
        return {"id": goal_id, "measure": measure, "value": min(gaps) if gaps else None, "per_dataset": gaps,
                "goal": goal, "met": worst(gaps), "datasets": len(gaps)}

    def seeded(p: dict, a: str, b: str) -> list[float]:
        """a minus b, points, per seed where both ran (seed 0: the arms themselves)."""
        if a not in p["arms"] or b not in p["arms"] or scoring_of(a, p["arms"][a]) != scoring_of(b, p["arms"][b]):
            return []
        runs = {arm: {"0": p["arms"][arm]["accuracy"], **p.get("seeds", {}).get(arm, {})} for arm in (a, b)}
        if len(runs) < 2:
            return []
        return [round((runs[a][k] - runs[b][k]) * 100, 2) for k in sorted(runs[a]) if k in runs[b]]

    def seeds_row(goal_id: str, a: str, b: str, goal: str) -> dict:
        per_seed = {p["dataset"]: gaps for p in parts if len(gaps := seeded(p, a, b)) > 1}
        return {"id": goal_id, "measure": f"{a} minus {b}, points, mean over seeds per dataset (seed 0 = the arms' "
                "own runs), datasets run with --seeds", **dataset_means(per_seed), "per_seed": per_seed,
                "goal": goal, "met": "informs", "datasets": len(per_seed)}

    def seed_mean_gap(a: str, b: str, digits: int | None = 2) -> dict[str, float]:
        """a minus b per dataset, points: the mean over the seeds both ran (one seed where only the arms ran),
        rounded to `digits` (None: exact, what a goal is judged on, so rounding never meets it)."""
        exact = {p["dataset"]: sum(g) / len(g) for p in parts if (g := seeded(p, a, b))}
        return exact if digits is None else {d: round(v, digits) for d, v in exact.items()}

    def mean_of(values) -> float | None:
        values = list(values)
        return round(sum(values) / len(values), 2) if values else None

    q6, q7 = seed_mean_gap("default", "plain"), seed_mean_gap("auto", "default")
    q7_exact = seed_mean_gap("auto", "default", digits=None)
    mean = sum(q7_exact.values()) / len(q7_exact) if q7_exact else None
    return [{"id": "Q6", "measure": "default recipe minus plain loop, test accuracy points (mean over the seeds both "
             "ran), worst dataset", "value": min(q6.values()) if q6 else None, "per_dataset": q6,
             "seed_0_only": min(gap("default", "plain"), default=None), "goal": ">= 0",
             "met": worst(list(q6.values())), "datasets": len(q6)},
            {"id": "Q7", "measure": "auto mode minus default recipe, test accuracy points (mean over the seeds both "
             "ran), mean over the panel", "value": None if mean is None else round(mean, 3), "per_dataset": q7,
             "worst": min(q7.values()) if q7 else None,
             "seed_0_only": mean_of(gap("auto", "default")),
             "worst_seed": min((g for p in parts for g in seeded(p, "auto", "default")), default=None),
             "goal": ">= +0.5 mean and >= 0 on every dataset",
             "met": (mean >= 0.5 and min(q7_exact.values()) >= 0) if q7 else "not measured", "datasets": len(q7)},
            informs("Q6-refit", "refit", "norefit", "refit=true minus refit=false, points per dataset",
                    "informs the refit rule: where refit wins and where it loses"),
            informs("Q6-refit-rule", "refitauto", "norefit", "refit=auto minus refit=false, points per dataset",
                    "informs: >= 0 on every dataset justifies refit=auto"),
            informs("Q6-fixed", "default", "fixed",
                    "data-driven default minus banking77's fixed settings, points per dataset",
                    "informs: >= 0 on every dataset justifies the data-driven default"),
            informs("Q6-weights", "default", "unweighted",
                    "default recipe minus class_weighting=none, points per dataset", "informs the class-weighting rule"),
            seeds_row("Q6-seeds", "default", "plain", "informs: whether Q6's single-seed gap is more than seed noise"),
            seeds_row("Q7-seeds", "auto", "default", "informs: whether Q7's single-seed gain is more than seed noise"),
            seeds_row("Q6-refit-rule-seeds", "refitauto", "norefit",
                      "informs: whether refit=auto's gain or loss is more than seed noise"),
            seeds_row("Q6-refit-seeds", "refit", "norefit",
                      "informs: whether refit's gain or loss is more than seed noise")]


def _soup_note(soup: dict | None) -> str | None:
    if not soup or not soup.get("members"):
        return None
    return f"{soup['members']} runs, {'written' if soup['written'] else 'not written'}: {soup.get('why')}"


def report() -> dict:
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(PARTS.glob("*.json"))]
    result = {"benchmark": "recipes", "goals": goals(parts), "datasets": parts,
              "baseline": "benchmarks/plain_loop.py: the issue's hand-written loop on the same rows",
              "reduced": "sizes per dataset are in datasets[].train_rows/test_rows/budget_seconds; the issue's "
                         "sizes are all rows and a 900 s auto budget",
              "command": "python benchmarks/recipes.py --report (after one --dataset run per panel entry)"}
    (RESULTS / "recipes.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    lines = ["# Recipes vs a plain loop (issue 23)", "",
             "Arms: `plain` = benchmarks/plain_loop.py; `default` = training/configs/classify-minilm.yaml as shipped "
             "(epochs/lr/warm-up/class weighting picked from the data, no refit); `refit` / `norefit` / `refitauto` = the "
             "same with `refit=true` / `refit=false` / `refit=auto`; "
             "`fixed` = the same with banking77's fixed settings (4 epochs, lr 2e-3, warm-up 0.06, balanced); "
             "`unweighted` = the default with `class_weighting=none`; "
             "`auto` = auto mode (`auto=true budget=...`). Test accuracy / macro-F1 on the same test rows; time = training (+ search) "
             "wall seconds on a 2-core host shared with other work.", "",
             "| dataset | train rows (of) | test rows | labels | imbalance | arm | accuracy | macro-F1 | time s | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in parts:
        for arm, r in p["arms"].items():
            stale = f" (scored {STALE_SCORING})" if scoring_of(arm, r) != SCORING else ""
            notes = r.get("settings") or ({"trials": r.get("trials"), "budget_s": r.get("budget_seconds"),
                                           "best": r.get("best_params"), "written": r.get("written_trial"),
                                           "refit": r.get("refit"), "soup": _soup_note(r.get("soup"))}
                                          if arm == "auto" else "")
            lines.append(f"| {p['dataset']} | {p['train_rows']} ({p['train_rows_available']}) | {p['test_rows']} | "
                         f"{p['labels']} | {p['imbalance']} | {arm} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
                         f"{r['train_seconds']} | {notes}{stale} |")
    lines += [f"- {p['dataset']}: {p['notes']}" for p in parts if p.get("notes")]
    lines += ["", "| goal | measure | value | target | met |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {g['id']} | {g['measure']} | {g['value']}"
              f"{'' if g.get('panel_mean') is None else '; panel mean ' + str(g['panel_mean'])}"
              f"{'' if not g.get('per_dataset') or not isinstance(g['per_dataset'], dict) else ' ' + str(g['per_dataset'])}"
              f"{'' if g.get('seed_0_only') is None else '; seed 0 only: ' + str(g['seed_0_only'])} | {g['goal']} | {g['met']} |"
              for g in result["goals"]]
    lines += ["", "Run (reduced from the issue's all rows / 900 s budget where the options say so; host load "
              "averages at start and end):", ""]
    lines += [f"- `{p['command']}` (load {p['machine_at_start']['load_average']} -> "
              f"{p.get('machine_at_end', {}).get('load_average')})" for p in parts]
    lines += ["", "Each arm's exact command: recipes.json (`datasets[].arms.*.command`).", ""]
    (RESULTS / "recipes.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return result

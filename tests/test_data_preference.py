"""Preference data through `tuneserve data prepare` (task=preference / kto): row validation with clear
reasons, cleaning that makes a pair's answers equal drops it, prompts stay in one split (no prompt
leaks into test), KTO labels coerced; human-eval ratings become pairs; the CLI wiring."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.artifact.config import load_config
from training.data.config import DataConfig
from training.data.pipeline import prepare
from training.data.tasks import FieldProblem, get_task

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pairs(n: int) -> list[dict]:
    topics = ["tea", "rivers", "chess", "volcanoes", "bees", "trains", "glass", "maps", "salt", "clocks"]
    return [{"prompt": f"Tell me one fact about {topics[i % 10]} number {i}.",
             "chosen": f"A true and useful fact about {topics[i % 10]}, item {i}.",
             "rejected": f"I do not know anything, sorry ({i})."} for i in range(n)]


def prep_cfg(src: Path, out: Path, task: str = "preference", *extra: str) -> DataConfig:
    return load_config(DataConfig, None, [f"task={task}", f"sources=[{{path: {src}}}]", f"output.dir={out}",
                                          "cleaning.near_dedup.enabled=false", *extra])


def test_preference_rows_validate_with_clear_reasons(tmp_path):
    rows = pairs(30) + [{"prompt": "p", "chosen": "same", "rejected": "same"},
                        {"prompt": "q", "chosen": "only chosen"},
                        {"prompt": "r", "chosen": "a  b", "rejected": "a b"}]  # equal once whitespace is cleaned
    result = prepare(prep_cfg(write(tmp_path / "p.jsonl", rows), tmp_path / "out"))
    bad = result.report["bad_rows"]
    assert bad["skipped"] == 2
    assert any("same text" in e for e in bad["examples"]) and any("'rejected'" in e for e in bad["examples"])
    assert result.report["rules"]["row_check"]["dropped"] == 1
    assert sum(result.meta["rows"].values()) == 30 and result.meta["task"] == "preference"
    row = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "chosen", "rejected"}


def test_a_prompt_with_several_pairs_stays_in_one_split(tmp_path):
    rows = pairs(30)
    rows += [{"prompt": rows[0]["prompt"], "chosen": f"another good answer {k}", "rejected": f"bad {k}"}
             for k in range(3)]
    result = prepare(prep_cfg(write(tmp_path / "p.jsonl", rows), tmp_path / "out"))
    assert sum(result.meta["rows"].values()) == 33  # dedup compares whole pairs, not prompts
    where = {split: {json.loads(x)["prompt"] for x in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()}
             for split in ("train", "validation", "test")}
    assert sum(rows[0]["prompt"] in prompts for prompts in where.values()) == 1
    assert not (where["train"] & where["test"]) and not (where["train"] & where["validation"])


def test_kto_labels_are_coerced_or_rejected():
    spec = get_task("kto")
    assert spec.coerce({"prompt": "p", "completion": "c", "label": "thumbs_up"})["label"] is True
    assert spec.coerce({"prompt": "p", "completion": "c", "label": 0})["label"] is False
    with pytest.raises(FieldProblem, match="true/false"):
        spec.coerce({"prompt": "p", "completion": "c", "label": "maybe"})


def test_human_eval_ratings_become_pairs(tmp_path):
    from training.evaluation.human_import import unblind
    from training.evaluation.human_pairs import ratings_to_pairs, read_sheet

    key = {"schema": "tuneserve.human-eval-key/1", "sheet_id": "s1", "criteria": [],
           "rows": {"r1": {"prompt_id": "1", "positions": {"A": "dpo", "B": "sft"}},
                    "r2": {"prompt_id": "2", "positions": {"A": "sft", "B": "dpo"}},
                    "r3": {"prompt_id": "3", "positions": {"A": "sft", "B": "dpo"}}}}
    write(tmp_path / "sheet.jsonl", [{"sheet_id": "s1", "row_id": f"r{i}", "prompt": f"prompt {i}",
                                      "response_A": f"answer A{i}", "response_B": f"answer B{i}"} for i in (1, 2, 3)])
    ratings = write(tmp_path / "ratings.jsonl", [
        {"row_id": "r1", "rater": "ann", "preference": "A"}, {"row_id": "r1", "rater": "bob", "preference": "A"},
        {"row_id": "r2", "rater": "ann", "preference": "B"}, {"row_id": "r2", "rater": "bob", "preference": "A"},
        {"row_id": "r3", "rater": "ann", "preference": "tie"}])
    made = ratings_to_pairs(key, read_sheet(tmp_path), unblind(key, ratings))
    assert made == [{"prompt": "prompt 1", "chosen": "answer A1", "rejected": "answer B1", "row_id": "r1",
                     "chosen_model": "dpo", "rejected_model": "sft", "votes": 2}]  # r2 split evenly, r3 a tie


def test_cli_prepares_pairs_and_refuses_a_mismatched_objective(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "tuneserve", *a], cwd=REPO, capture_output=True,
                                    text=True, timeout=180)
    src = write(tmp_path / "p.jsonl", pairs(20))
    done = run("data", "prepare", "task=preference", f"sources=[{{path: {src}}}]", f"output.dir={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["task"] == "preference"
    bad = run("train", "objective=dpo", "task=classification", f"data.path={tmp_path / 'out'}",
              f"output={tmp_path / 'x'}")
    assert bad.returncode == 2 and "task=causal-lm" in bad.stderr and "Traceback" not in bad.stderr

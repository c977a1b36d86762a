"""`tuneserve data import-feedback`: a feedback store (written with the serving side's format module)
becomes classification rows, instruction rows and preference pairs, and the classification file goes
through `tuneserve data prepare` unchanged.  Run: pytest tests/test_feedback_import.py
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from training.artifact import feedback as disk
from training.artifact.errors import DataError
from training.data.feedback_import import import_feedback
from tuneserve.cli import app

WORDS = ["refund", "card", "lost", "charge", "limit", "atm", "transfer", "pin", "fee", "balance"]


def row(i: int, kind: str, **fields) -> disk.FeedbackRow:
    task = "classification" if kind == "label" else fields.pop("task", "generation")
    return disk.FeedbackRow(id=f"fb-{i}", response_id=f"r-{i}", item=0, model=fields.pop("model", "m1"), key_id="k",
                            tenant="t", task=task, kind=kind, created=time.time() - 100 + i, **fields)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "fb.db"
    conn = disk.connect(path)
    for i in range(40):  # label feedback on varied texts, two classes
        text = f"my {WORDS[i % 10]} question {WORDS[(i * 3) % 10]} number {i} about {WORDS[(i * 7) % 10]}"
        disk.put_feedback(conn, row(i, "label", input=text, label="billing" if i % 2 else "cards",
                                    prediction="cards", correct=i % 2 == 0))
    disk.put_feedback(conn, row(100, "correct_answer", input="Capital of France?", correct_answer="Paris",
                                prediction="Lyon"))
    disk.put_feedback(conn, row(101, "correct_answer", input="2+2?", correct_answer="4", prediction=" 4 "))
    disk.put_feedback(conn, row(102, "correct_answer", input="Long?", correct_answer="short", prediction="x" * 16,
                                truncated=True))
    disk.put_feedback(conn, row(103, "rating", input="Say hi", prediction="Hi!", rating=5))
    disk.put_feedback(conn, row(104, "rating", input="Say bye", prediction="Hi!", rating=1))
    disk.put_feedback(conn, row(105, "label", input=None, label="cards", prediction="cards", correct=True))
    disk.put_feedback(conn, row(106, "label", input="other model", label="x", prediction="y", correct=False, model="m2"))
    conn.close()
    return path


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_pairs_and_report(store, tmp_path):
    report = import_feedback(store, tmp_path / "out", model="m1")
    out = tmp_path / "out"
    assert report["feedback"] == 46 and report["rows"] == {"classification": 40, "instruction": 4, "preference": 1}
    assert report["skipped"] == {"no stored input": 1, "rating (no training row)": 1}
    classification = read(out / "classification.jsonl")
    assert classification[1] == {"text": classification[1]["text"], "label": "billing"}
    instruction = read(out / "instruction.jsonl")
    assert {"instruction": "Say hi", "input": "", "output": "Hi!"} in instruction
    assert {"instruction": "Capital of France?", "input": "", "output": "Paris"} in instruction
    # a correct answer equal to the served one (up to spaces) and a truncated served one make no pair
    assert read(out / "preference.jsonl") == [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"}]
    assert sorted(p.name for p in out.glob("data_*.yaml")) == ["data_classification.yaml", "data_instruction.yaml"]
    with pytest.raises(DataError):
        import_feedback(store, out)  # not empty: refuses without overwrite
    with pytest.raises(DataError):
        import_feedback(tmp_path / "missing.db", tmp_path / "o2")


def test_cli_output_goes_through_data_prepare(store, tmp_path):
    runner = CliRunner()
    out = tmp_path / "fb"
    result = runner.invoke(app, ["data", "import-feedback", "--store", str(store), "--out", str(out), "--keep-rating", "0"])
    assert result.exit_code == 0, result.output
    assert "classification 41" in result.output and "next: tuneserve data prepare" in result.output
    prepared = runner.invoke(app, ["data", "prepare", str(out / "data_classification.yaml"), "output.plots=false"])
    assert prepared.exit_code == 0, prepared.output
    meta = json.loads((out / "prepared" / "classification" / "dataset.json").read_text())
    assert meta["task"] == "classification" and set(meta["labels"]) >= {"billing", "cards"}
    assert sum(meta["rows"].values()) >= 30

"""Tests for the data slices `tuneserve demo` trains on (training/demo/slices.py): real data when
present, the shipped files otherwise, always in the format the trainer reads.

    pytest tests/test_demo_slices.py
"""

from __future__ import annotations

import csv
import json

from training.demo.slices import BANKING_INTENTS, SHORT_ROW_CHARS, find_shared_data, instruction_slice, intent_slice


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def fake_shared(tmp_path):
    shared = tmp_path / "shared" / "data"
    (shared / "alpaca_en_demo").mkdir(parents=True)
    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi."},
            {"instruction": "Write an essay.", "input": "", "output": "x" * SHORT_ROW_CHARS},
            {"instruction": "Add.", "input": "1 and 2", "output": "3"}]
    (shared / "alpaca_en_demo" / "alpaca_en_demo.json").write_text(json.dumps(rows))
    (shared / "banking77").mkdir()
    with (shared / "banking77" / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["text", "category"], ["I lost my card", "lost_or_stolen_card"],
                          ["What is the fee for crypto?", "beneficiary_not_allowed"], ["Where is my card?", "card_arrival"]])
    return shared


def test_real_data_slices_keep_short_rows_and_demo_intents(tmp_path):
    shared = fake_shared(tmp_path)
    path, source = instruction_slice(shared, tmp_path / "out" / "sft.jsonl", rows=10)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert source.endswith("alpaca_en_demo.json")
    assert [r["instruction"] for r in rows] == ["Say hi.", "Add."]  # the long row is left out
    intents = intent_slice(shared, tmp_path / "out" / "intents.csv")
    assert [(r["text"], r["label"]) for r in read_csv(intents.path)] == [
        ("I lost my card", "lost_or_stolen_card"), ("Where is my card?", "card_arrival")]
    assert (intents.question, intents.expected) == ("I lost my card yesterday", "lost_or_stolen_card")
    assert intents.labels == BANKING_INTENTS and intents.expected in intents.labels


def test_shipped_data_when_shared_data_is_absent(tmp_path):
    path, source = instruction_slice(None, tmp_path / "sft.jsonl", rows=5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert source.endswith("instructions.jsonl") and len(rows) == 5
    assert all(set(r) == {"instruction", "input", "output"} for r in rows)
    intents = intent_slice(None, tmp_path / "intents.csv")
    rows = read_csv(intents.path)
    assert intents.labels == ("account", "billing", "shipping") and intents.expected == "shipping"
    assert all(r["text"] and "<" not in r["text"] and r["label"] in intents.labels for r in rows)


def test_shared_data_is_found_beside_the_working_directory(tmp_path, monkeypatch):
    shared = fake_shared(tmp_path)
    assert find_shared_data(shared) == shared
    assert find_shared_data(tmp_path / "missing") is None
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    assert find_shared_data() == shared

"""Evaluation rows: prepared directories, raw files with a column mapping (real banking77 CSV), errors."""

from __future__ import annotations

import json

import pytest

from training.artifact.errors import ConfigError, DataError
from training.evaluation.datasets import load_eval_data


def test_raw_csv_with_column_mapping(shared_data):
    data = load_eval_data(shared_data / "banking77" / "test.csv", task="classification", columns={"label": "category"},
                          limit=120, seed=4)
    assert data.task == "classification" and len(data.rows) == 120
    assert set(data.rows[0]) == {"text", "label"} and len(data.labels) > 30, "a seeded sample spans many classes"
    again = load_eval_data(shared_data / "banking77" / "test.csv", task="classification", columns={"label": "category"},
                           limit=120, seed=4)
    assert again.fingerprint == data.fingerprint
    other = load_eval_data(shared_data / "banking77" / "test.csv", task="classification", columns={"label": "category"},
                           limit=120, seed=5)
    assert other.fingerprint != data.fingerprint


def test_prepared_dir_brings_task_and_labels(tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "hi", "label": "b"}) + "\n")
    (tmp_path / "validation.jsonl").write_text(json.dumps({"text": "yo", "label": "a"}) + "\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"task": "classification", "labels": ["a", "b", "c"]}))
    data = load_eval_data(tmp_path)
    assert data.task == "classification" and data.labels == ["a", "b", "c"] and data.rows == [{"text": "hi", "label": "b"}]
    assert load_eval_data(tmp_path, split="validation").rows[0]["text"] == "yo"
    with pytest.raises(DataError, match="has no split 'train'") as info:
        load_eval_data(tmp_path, split="train")
    assert "test" in info.value.hint
    with pytest.raises(ConfigError, match="is for task 'classification', not 'qa'"):
        load_eval_data(tmp_path, task="qa")


def test_raw_file_errors(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ConfigError, match="cannot tell the task"):
        load_eval_data(rows)
    with pytest.raises(DataError, match="no usable qa rows"):
        load_eval_data(rows, task="qa")
    with pytest.raises(DataError, match="does not exist"):
        load_eval_data(tmp_path / "missing.jsonl", task="qa")

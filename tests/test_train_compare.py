"""`compare` trains each method on the same data and writes markdown, JSON and a PNG plot."""

from __future__ import annotations

import json

import pytest
from train_support import instruction_rows, make_config, train_args, write_jsonl

from training.artifact.errors import ConfigError
from training.train.compare import CompareConfig, compare, markdown_table


def _cfg(tiny_base_dir, tmp_path, methods):
    data = write_jsonl(tmp_path / "rows.jsonl", instruction_rows(24))
    train = make_config(*train_args(tiny_base_dir, data, tmp_path / "unused", "max_steps=3", "batch_size=4"))
    return CompareConfig(methods=methods, train=train, output=str(tmp_path / "cmp"),
                         overrides={"full": {"optim": {"lr": 1e-4}}})


def test_compare_writes_table_json_and_plot(tiny_base_dir, tmp_path):
    result = compare(_cfg(tiny_base_dir, tmp_path, ["lora", "full"]))
    rows = {r["method"]: r for r in result["results"]}
    assert rows["lora"]["trainable_parameters"] < rows["full"]["trainable_parameters"]
    assert rows["lora"]["artifact_bytes"] < rows["full"]["artifact_bytes"]
    assert rows["full"]["metrics"]["val_loss"] == rows["full"]["value"]
    saved = json.loads(open(result["json"]).read())
    assert saved["config"]["overrides"]["full"]["optim"]["lr"] == 1e-4
    assert json.loads((tmp_path / "cmp" / "full" / "manifest.json").read_text())["hyperparameters"]["optim"]["lr"] == 1e-4
    md = open(result["markdown"]).read()
    assert "| lora |" in md and "| full |" in md
    with open(result["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_validates_methods_before_training(tiny_base_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown fine-tuning method"):
        compare(_cfg(tiny_base_dir, tmp_path, ["lora", "nope"]))
    assert not (tmp_path / "cmp" / "lora").exists()


def test_markdown_handles_missing_metric():
    row = {"method": "x", "metric": "val_loss", "value": None, "trainable_parameters": 10, "train_seconds": 1.0,
           "artifact_bytes": 2_000_000}
    assert "| x | val_loss | n/a | 10 | 1.0 | 2.00 |" in markdown_table([row])

"""End to end: `prepare` writes splits, dataset.json and the report; fingerprints; load_prepared; CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.artifact.config import load_config
from training.artifact.errors import DataError
from training.data import DataConfig, fingerprint_rows, load_prepared, prepare

REPO = Path(__file__).resolve().parents[1]
TICKETS = REPO / "training" / "configs" / "data_demo_tickets.yaml"


def tickets_cfg(out: Path, *overrides: str) -> DataConfig:
    return load_config(DataConfig, TICKETS, [f"output.dir={out}", "output.plots=false", *overrides],
                       base={"sources": [{"path": str(REPO / "training/demo/demo_tickets.csv"),
                                          "columns": {"text": "text", "label": "category"}}]})


def test_prepare_demo_tickets_writes_the_contract(tmp_path):
    cfg = tickets_cfg(tmp_path / "out", "output.plots=true")
    cfg.sources[0].path = str(REPO / "training/demo/demo_tickets.csv")
    result = prepare(cfg)
    out = result.path
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "dataset.json", "data_report.json", "data_report.md",
                 "length_histogram.png", "label_histogram.png"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["task"] == "classification" and meta["labels"] == ["account", "billing", "shipping"]
    assert set(meta["fields"]) == {"text", "label"} and meta["class_weights"] is None
    ds = load_prepared(out)
    assert ds.rows == meta["rows"] and ds.fingerprint == result.fingerprint
    assert all(set(r) <= {"text", "label", "augmented", "slices"} for split in ds.splits.values() for r in split)
    assert meta["slices"] == ["column:channel", "keywords:payment"]  # the declared slices, on every row
    assert all(set(r["slices"]) == set(meta["slices"]) for split in ds.splits.values() for r in split)
    assert any(r.get("augmented") for r in ds.splits["train"])
    assert not any(r.get("augmented") for s in ("validation", "test") for r in ds.splits[s])
    report = json.loads((out / "data_report.json").read_text())
    assert report["bad_rows"]["skipped"] == 2  # the blank-label row and the whitespace-only text
    assert report["rules"]["pii"]["masked"]["email"] == 1 and report["rules"]["pii"]["masked"]["card"] == 1
    assert report["rules"]["html"]["changed"] == 1 and report["rules"]["exact_dedup"]["dropped"] >= 1
    assert report["bias"]["slices"]["keywords:payment"]["train"]["rows"] > 0
    assert report["mitigation"]["imbalance_after"] == 1.0
    texts = [r["text"] for s in ds.splits.values() for r in s]
    assert not any("jane.doe@example.com" in t or "<p>" in t for t in texts)
    assert "Steps" in (out / "data_report.md").read_text()


def test_fingerprint_is_reproducible_and_tracks_data_and_config(tmp_path):
    a = prepare(tickets_cfg(tmp_path / "a"))
    b = prepare(tickets_cfg(tmp_path / "b"))
    c = prepare(tickets_cfg(tmp_path / "c", "split.seed=7"))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert (a.path / "train.jsonl").read_bytes() == (b.path / "train.jsonl").read_bytes()
    rows = load_prepared(a.path).splits["train"]
    assert fingerprint_rows(rows) == a.meta["split_fingerprints"]["train"] != fingerprint_rows(rows[::-1])


def test_load_prepared_detects_tampering_and_missing_files(tmp_path):
    result = prepare(tickets_cfg(tmp_path / "d"))
    with (result.path / "test.jsonl").open("a") as fh:
        fh.write(json.dumps({"text": "slipped in", "label": "billing"}) + "\n")
    with pytest.raises(DataError, match="rows, dataset.json says"):
        load_prepared(result.path)
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_prepared(tmp_path)


def test_output_is_atomic_and_not_overwritten_by_default(tmp_path):
    out = tmp_path / "o"
    prepare(tickets_cfg(out))
    with pytest.raises(DataError, match="already exists"):
        prepare(tickets_cfg(out, "output.overwrite=false"))
    prepare(tickets_cfg(out, "output.overwrite=true", "split.seed=9"))
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


def test_all_rows_dropped_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"all \d+ rows were dropped by cleaning \(most by rule 'length'"):
        prepare(tickets_cfg(tmp_path / "x", "cleaning.length.min_chars=10000"))


def test_leakage_fail_mode_stops_the_run(tmp_path):
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(json.dumps({"text": f"sentence number {i % 20} about shipping things", "label": "s" if i % 2 else "b"}) + "\n"
                           for i in range(60)))
    cfg = DataConfig(task="classification", sources=[{"path": str(src)}], split={"leakage": "fail", "stratify": False},
                     cleaning={"exact_dedup": {"enabled": False}, "near_dedup": {"enabled": False}},
                     output={"dir": str(tmp_path / "out"), "plots": False})
    with pytest.raises(DataError, match="duplicate in another split"):
        prepare(cfg)
    assert not (tmp_path / "out").exists()


def test_annotations_fill_labels_during_prepare(tmp_path):
    src = tmp_path / "raw.jsonl"
    rows = [{"text": f"refund order {i}", "label": "billing"} for i in range(10)]
    rows += [{"text": f"late parcel {i}"} for i in range(10)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = tmp_path / "labels.csv"
    labels.write_text("text,label,annotator\n" + "".join(f"late parcel {i},shipping,ann\n" for i in range(8)))
    cfg = DataConfig(task="classification", sources=[{"path": str(src)}], annotations={"files": [str(labels)]},
                     cleaning={"near_dedup": {"enabled": False}}, split={"leakage": "off"},
                     output={"dir": str(tmp_path / "out"), "plots": False})
    result = prepare(cfg)
    assert result.report["agreement"]["filled"] == 8 and result.report["agreement"]["dropped_unlabeled"] == 2
    assert sum(result.meta["rows"].values()) == 18 and result.meta["labels"] == ["billing", "shipping"]


def test_trainer_reads_the_prepared_directory(tmp_path):
    train_data = pytest.importorskip("training.train.data", reason="the trainer package is not in this tree")
    from training.train.config import DataConfig as TrainDataConfig

    result = prepare(tickets_cfg(tmp_path / "t", "bias.mitigation=class_weights", "augmentation.enabled=false"))
    splits = train_data.load_splits(TrainDataConfig(path=str(result.path)), task="classification", seed=1)
    assert splits.fingerprint == result.fingerprint and splits.labels == result.meta["labels"]
    assert len(splits.train) == result.meta["rows"]["train"] and splits.class_weights == result.meta["class_weights"]


@pytest.mark.integration
def test_cli_prepare_inspect_and_annotate(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "tuneserve", *a], cwd=REPO, capture_output=True, check=False,
                                    text=True, timeout=120)
    out = tmp_path / "cli"
    done = run("data", "prepare", str(REPO / "training/configs/data_demo_instructions.yaml"), f"output.dir={out}")
    assert done.returncode == 0, done.stderr
    assert "prepared" in done.stdout and load_prepared(out).task == "instruction"
    shown = run("data", "inspect", str(out))
    assert shown.returncode == 0 and "rows: train=" in shown.stdout
    again = run("data", "prepare", str(REPO / "training/configs/data_demo_instructions.yaml"), f"output.dir={out}",
                "output.overwrite=false")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    ls = tmp_path / "ls.json"
    exported = run("data", "annotate", "export", str(TICKETS), "--out", str(ls), "--strategy", "unlabeled")
    assert exported.returncode == 0, exported.stderr
    assert [t["data"]["text"] for t in json.loads(ls.read_text())] == ["Where is my parcel"]  # the row without label
    merged = run("data", "annotate", "import", str(ls), "--out", str(tmp_path / "m.jsonl"))
    assert merged.returncode == 2 and "no labels found" in merged.stderr

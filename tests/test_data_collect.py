"""Collection: readers for every format, column mapping, bad rows with file:line, on_error."""

from __future__ import annotations

import json

import pytest

from training.artifact.errors import DataError
from training.data.collect import collect
from training.data.config import DataConfig


def cfg_for(path, task="classification", **kw) -> DataConfig:
    source = {"path": str(path), **kw.pop("source", {})}
    return DataConfig(task=task, sources=[source], **kw)


def test_jsonl_bad_rows_are_counted_with_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "good one", "label": "a"}\n'
                     b'not json\n'
                     b'{"text": "no label"}\n'
                     b'\n'
                     b'{"text": 5, "label": "a"}\n'
                     b'{"text": "bad \xff byte", "label": "b"}\n'
                     b'["a list"]\n'
                     b'{"text": "second good", "label": 2}\n')
    rows, log = collect(cfg_for(path))
    assert [r.data for r in rows] == [{"text": "good one", "label": "a"}, {"text": "second good", "label": "2"}]
    assert log.count == 5
    joined = "\n".join(log.examples)
    for line, reason in [(2, "invalid JSON"), (3, "missing field 'label'"), (5, "field 'text' must be text"),
                         (6, "undecodable"), (7, "expected a JSON object")]:
        assert f"rows.jsonl:{line}: {reason}" in joined
    assert rows[1].origin.endswith("rows.jsonl:8")


def test_on_error_fail_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"label": "a"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:2: missing field 'text'"):
        collect(cfg_for(path, on_error="fail"))


def test_json_array_reports_the_line_each_object_starts_on(tmp_path):
    path = tmp_path / "data.json"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c"}, {"instruction": "d", "input": "e", "output": "f"}]
    path.write_text(json.dumps(rows, indent=2))
    got, log = collect(cfg_for(path, task="instruction"))
    assert [r.data for r in got] == [{"instruction": "a", "input": "", "output": "b"},
                                    {"instruction": "d", "input": "e", "output": "f"}]
    assert log.examples == [f"{path}:6: missing field 'output'"]


def test_csv_with_column_mapping_and_wrong_field_count(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('utterance,category\n"hello, there",greet\nshort row\nbye,leave,extra\n"multi\nline",greet\n')
    rows, log = collect(cfg_for(path, source={"columns": {"text": "utterance", "label": "category"}}))
    assert [r.data for r in rows] == [{"text": "hello, there", "label": "greet"}, {"text": "multi\nline", "label": "greet"}]
    assert log.count == 2 and all("fields, header has 2" in e for e in log.examples)


def test_tsv_parquet_text_and_hf_disk(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.tsv").write_text("text\tlabel\nx y\tp\n")
    pq.write_table(pa.table({"sentence": ["from parquet"], "y": [1]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("first para\nstill first\n\nsecond para\n")
    hf = tmp_path / "hf"
    hf.mkdir()
    with pa.ipc.new_stream(str(hf / "data-00000-of-00001.arrow"), pa.schema([("text", pa.string()), ("label", pa.int64())])) as w:
        w.write_table(pa.table({"text": ["hf row"], "label": [1]}))
    (hf / "dataset_info.json").write_text(json.dumps({"features": {"text": {"_type": "Value"},
                                                                   "label": {"_type": "ClassLabel", "names": ["neg", "pos"]}}}))
    (hf / "state.json").write_text("{}")
    cfg = DataConfig(task="classification", sources=[
        {"path": str(tmp_path / "a.tsv")},
        {"path": str(tmp_path / "b.parquet"), "columns": {"text": "sentence", "label": "y"}, "label_names": ["zero", "one"]},
        {"path": str(hf)}])
    rows, _ = collect(cfg)
    assert [r.data for r in rows] == [{"text": "x y", "label": "p"}, {"text": "from parquet", "label": "one"},
                                      {"text": "hf row", "label": "pos"}]
    paras, _ = collect(DataConfig(task="text", sources=[{"path": str(tmp_path / "c.txt"), "text_mode": "paragraph"}]))
    assert [r.data["text"] for r in paras] == ["first para\nstill first", "second para"]


def test_nested_columns_for_qa(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"context": "Paris is in France.", "question": "Where is Paris?",
                                "answers": {"text": ["France"], "answer_start": [12]}}) + "\n")
    rows, _ = collect(cfg_for(path, task="qa"))
    assert rows[0].data["answers"] == ["France"]


def test_directory_source_reads_every_data_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.jsonl").write_text('{"text": "a", "label": "x"}\n')
    (tmp_path / "d" / "2.csv").write_text("text,label\nb,y\n")
    (tmp_path / "d" / "notes.bin").write_bytes(b"\x00")
    rows, log = collect(cfg_for(tmp_path / "d"))
    assert sorted(r.data["text"] for r in rows) == ["a", "b"] and len(log.per_source) == 2


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="no usable rows"):
        collect(cfg_for(path))


def test_missing_source_and_unknown_mapping(tmp_path):
    from training.artifact.errors import ConfigError

    with pytest.raises(DataError, match="does not exist"):
        collect(cfg_for(tmp_path / "nope.csv"))
    path = tmp_path / "a.csv"
    path.write_text("text,label\na,b\n")
    with pytest.raises(ConfigError, match="unknown fields"):
        collect(cfg_for(path, source={"columns": {"sentence": "text"}}))

"""File readers: one registry entry per format, each yielding `(locator, record)` pairs.

A record is a dict, or a `BadRecord(reason)` for a row the reader could not parse or decode,
so the collector can report it with its file and line. Formats: json (array, or an object
holding one array), jsonl, csv, tsv, parquet, text (line / paragraph / document) and hf_disk
(a directory written by HF `datasets.save_to_disk`, read with pyarrow alone).

    for where, rec in read_source(Path("train.csv"), "csv"):
        ...
    fmt = infer_format(Path("data/"))     # "hf_disk" for a save_to_disk directory
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.artifact.errors import DataError
from training.data.registry import registrar

EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
              ".parquet": "parquet", ".txt": "text", ".text": "text", ".md": "text"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class BadRecord:
    reason: str


Record = dict[str, Any] | BadRecord
Reader = Callable[..., Iterator[tuple[int | str, Record]]]
READERS: dict[str, Reader] = {}
reader = registrar(READERS)


def has_undecodable(value: Any) -> bool:
    """True when text decoded with surrogateescape kept bytes that are not valid UTF-8."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(has_undecodable(v) for v in value.values())
    if isinstance(value, list):
        return any(has_undecodable(v) for v in value)
    return False


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None


def _checked(record: dict[str, Any]) -> Record:
    return BadRecord("undecodable text (not valid UTF-8)") if has_undecodable(record) else record


@reader("jsonl")
def read_jsonl(path: Path, **_: Any) -> Iterator[tuple[int, Record]]:
    for lineno, line in enumerate(_decode(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, BadRecord(f"invalid JSON: {exc.msg}")
            continue
        yield lineno, _checked(value) if isinstance(value, dict) else BadRecord(
            f"expected a JSON object, got {type(value).__name__}")


@reader("json")
def read_json(path: Path, **_: Any) -> Iterator[tuple[int, Record]]:
    """A JSON array of objects (or `{"key": [...]}`), with the line each object starts on."""
    text = _decode(path)
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if pos == len(text):
        return
    if text[pos] == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}", "fix the file or convert it to JSONL") from None
        lists = [v for v in whole.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of rows or an object holding one array",
                            "store rows as [{...}, {...}] or as JSONL")
        for index, value in enumerate(lists[0]):
            yield f"[{index}]", _checked(value) if isinstance(value, dict) else BadRecord("expected a JSON object")
        return
    if text[pos] != "[":
        raise DataError(f"{path}: expected a JSON array of rows", "store rows as [{...}, {...}] or as JSONL")
    pos += 1
    line, counted = 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}", "fix the file or convert it to JSONL") from None
        yield line, _checked(value) if isinstance(value, dict) else BadRecord(
            f"expected a JSON object, got {type(value).__name__}")


def _read_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, Record]]:
    reader_ = csv.DictReader(io.StringIO(_decode(path), newline=""), delimiter=delimiter)
    header = reader_.fieldnames or []
    for record in reader_:
        lineno = reader_.line_num
        if None in record or any(v is None for v in record.values()):
            found = len(header) + len(record.get(None) or []) - sum(v is None for v in record.values())
            yield lineno, BadRecord(f"has {found} fields, header has {len(header)}")
            continue
        yield lineno, _checked(record)


@reader("csv")
def read_csv(path: Path, **_: Any) -> Iterator[tuple[int, Record]]:
    return _read_delimited(path, ",")


@reader("tsv")
def read_tsv(path: Path, **_: Any) -> Iterator[tuple[int, Record]]:
    return _read_delimited(path, "\t")


@reader("text")
def read_text(path: Path, text_mode: str = "line", **_: Any) -> Iterator[tuple[int, Record]]:
    text = _decode(path)
    if text_mode == "document":
        if text.strip():
            yield 1, _checked({"text": text})
        return
    lines = text.split("\n")
    if text_mode == "line":
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                yield lineno, _checked({"text": line})
        return
    start, buf = 1, []
    for lineno, line in enumerate([*lines, ""], start=1):
        if line.strip():
            if not buf:
                start = lineno
            buf.append(line)
        elif buf:
            yield start, _checked({"text": "\n".join(buf)})
            buf = []


@reader("parquet")
def read_parquet(path: Path, **_: Any) -> Iterator[tuple[str, Record]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several unrelated types for bad files)
        raise DataError(f"cannot read parquet file {path}: {exc}", "check that the file is valid Parquet") from None
    for index, record in enumerate(table.to_pylist()):
        yield f"row {index}", record


def hf_label_names(directory: Path) -> dict[str, list[str]]:
    """ClassLabel names per column from a save_to_disk `dataset_info.json` (empty if none)."""
    info = directory / "dataset_info.json"
    if not info.is_file():
        return {}
    features = json.loads(info.read_text(encoding="utf-8")).get("features") or {}
    return {name: feat["names"] for name, feat in features.items()
            if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and "names" in feat}


def _hf_dirs(directory: Path, split: str | None) -> list[Path]:
    dict_file = directory / "dataset_dict.json"
    if not dict_file.is_file():
        return [directory]
    splits = json.loads(dict_file.read_text(encoding="utf-8")).get("splits", [])
    if split is None:
        return [directory / name for name in splits]
    if split not in splits:
        raise DataError(f"{directory} has splits {splits}, not {split!r}", "set sources[].hf_split to one of them")
    return [directory / split]


@reader("hf_disk")
def read_hf_disk(path: Path, hf_split: str | None = None, **_: Any) -> Iterator[tuple[str, Record]]:
    import pyarrow as pa

    for directory in _hf_dirs(path, hf_split):
        arrows = sorted(directory.glob("*.arrow"))
        if not arrows:
            raise DataError(f"{directory} holds no .arrow files", "point at a directory written by save_to_disk")
        names = hf_label_names(directory)
        for arrow in arrows:
            with pa.memory_map(str(arrow)) as source:
                table = pa.ipc.open_stream(source).read_all()
            for index, record in enumerate(table.to_pylist()):
                for column, labels in names.items():
                    value = record.get(column)
                    if isinstance(value, int) and 0 <= value < len(labels):
                        record[column] = labels[value]
                yield f"{arrow.name} row {index}", record


def infer_format(path: Path) -> str:
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_MARKERS):
            return "hf_disk"
        raise DataError(f"cannot infer the format of directory {path}", "set sources[].format")
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot infer the format of {path} from its extension",
                        f"set sources[].format to one of {sorted(READERS)}")
    return fmt


def expand_source(path: Path, fmt: str | None) -> list[tuple[Path, str]]:
    """A file, a save_to_disk directory, or a directory of data files (sorted, recursive)."""
    if not path.exists():
        raise DataError(f"data source {path} does not exist", "check sources[].path (relative to the working directory)")
    if path.is_file() or fmt == "hf_disk" or (path.is_dir() and infer_format_or_none(path) == "hf_disk"):
        return [(path, fmt or infer_format(path))]
    files = sorted(p for p in path.rglob("*") if p.is_file() and (fmt or EXTENSIONS.get(p.suffix.lower())))
    if fmt is None:
        files = [p for p in files if p.suffix.lower() in EXTENSIONS]
    if not files:
        raise DataError(f"directory {path} holds no data files", f"expected extensions {sorted(EXTENSIONS)}")
    return [(p, fmt or infer_format(p)) for p in files]


def infer_format_or_none(path: Path) -> str | None:
    try:
        return infer_format(path)
    except DataError:
        return None


def read_source(path: Path, fmt: str, **options: Any) -> Iterator[tuple[int | str, Record]]:
    if fmt not in READERS:
        raise DataError(f"unknown format {fmt!r}", f"use one of {sorted(READERS)}")
    return READERS[fmt](path, **options)

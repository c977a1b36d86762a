"""The production-feedback store's on-disk format: one SQLite file (stdlib `sqlite3`), shared by the
server that writes it (`service/feedback.py`) and `tuneserve data import-feedback` that reads it
(`training/data/feedback_import.py`). Both sides import only this module, so the format is defined once.

    conn = connect("artifacts/.tuneserve-feedback.db")           # creates the tables; WAL journal
    put_served(conn, [ServedRecord("cls-1", "clf", "k1", "acme", "classification", [ServedItem("hi", "pos")], time.time())])
    record = get_served(conn, "cls-1")
    replaced = put_feedback(conn, FeedbackRow(...))
    for row in read_feedback("artifacts/.tuneserve-feedback.db", model="clf"): ...   # read-only, for import

Tables (`schema_version` in `meta`):
- `served`: one row per served response id — the resolved model id (adapter version), the API key id
  and its owner (tenant), the task kind (`classification` | `generation`), its items as JSON
  (`[{input, prediction, sha256, truncated}]`: a classifier's text and label, a generation's prompt
  and its text, both cut to the server's bounds) and when it was served. Rows expire (server TTL).
- `feedback`: one row per (response id, item): who gave it, the kind (`label` | `correct_answer` |
  `rating`), the value, an optional comment, and a snapshot of the served item (input, prediction,
  whether the label matched) so feedback stays usable after its served row expired. A later
  feedback on the same item replaces the earlier one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from training.artifact.errors import DataError

SCHEMA_VERSION = 1
TASKS = ("classification", "generation")
KINDS = ("label", "correct_answer", "rating")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS served (
    response_id TEXT PRIMARY KEY, model TEXT NOT NULL, key_id TEXT NOT NULL, tenant TEXT NOT NULL,
    task TEXT NOT NULL, items TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS served_created ON served (created);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, response_id TEXT NOT NULL, item INTEGER NOT NULL, model TEXT NOT NULL,
    key_id TEXT NOT NULL, tenant TEXT NOT NULL, task TEXT NOT NULL, kind TEXT NOT NULL,
    label TEXT, correct_answer TEXT, rating INTEGER, comment TEXT,
    input TEXT, prediction TEXT, prediction_sha256 TEXT, truncated INTEGER NOT NULL DEFAULT 0,
    correct INTEGER, created REAL NOT NULL, UNIQUE (response_id, item));
CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model, created);
"""


@dataclass
class ServedItem:
    input: str | None  # None when inputs are not stored (feedback.store_inputs=false) or were token ids
    prediction: str
    sha256: str = ""  # of the whole generated text (generation), "" for labels
    truncated: bool = False


@dataclass
class ServedRecord:
    response_id: str
    model: str
    key_id: str
    tenant: str
    task: str
    items: list[ServedItem]
    created: float


@dataclass
class FeedbackRow:
    id: str
    response_id: str
    item: int
    model: str
    key_id: str
    tenant: str
    task: str
    kind: str
    created: float
    label: str | None = None
    correct_answer: str | None = None
    rating: int | None = None
    comment: str | None = None
    input: str | None = None
    prediction: str | None = None
    prediction_sha256: str | None = None
    truncated: bool = False
    correct: bool | None = None  # label feedback: the served label was the right one


def connect(path: str | Path, journal: str = "wal", timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open (creating) the store; `journal` "wal" (readers never block the writer; needs a local or
    POSIX-locking filesystem) or "delete" (network volumes). The connection may cross threads: the
    caller serializes its use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA journal_mode={'WAL' if journal == 'wal' else 'DELETE'}")
    conn.execute("PRAGMA synchronous=NORMAL")
    with conn:
        conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    _check_version(conn, path)
    return conn


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or int(row[0]) > SCHEMA_VERSION:
        raise DataError(f"the feedback store {path} has schema version {row and row[0]}, this tuneserve reads "
                        f"{SCHEMA_VERSION}", "upgrade tuneserve, or point feedback.path at a new file")


def put_served(conn: sqlite3.Connection, records: list[ServedRecord]) -> None:
    rows = [(r.response_id, r.model, r.key_id, r.tenant, r.task, json.dumps([asdict(i) for i in r.items]), r.created)
            for r in records]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT OR REPLACE INTO served VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def get_served(conn: sqlite3.Connection, response_id: str) -> ServedRecord | None:
    row = conn.execute("SELECT * FROM served WHERE response_id = ?", (response_id,)).fetchone()
    if row is None:
        return None
    items = [ServedItem(**i) for i in json.loads(row[5])]
    return ServedRecord(row[0], row[1], row[2], row[3], row[4], items, row[6])


def prune_served(conn: sqlite3.Connection, older_than: float, max_rows: int) -> int:
    """Drop served rows older than `older_than` (unix time) and the oldest beyond `max_rows`."""
    gone = conn.execute("DELETE FROM served WHERE created < ?", (older_than,)).rowcount
    gone += conn.execute("DELETE FROM served WHERE response_id IN (SELECT response_id FROM served "
                         "ORDER BY created DESC LIMIT -1 OFFSET ?)", (max_rows,)).rowcount
    return gone


_FEEDBACK_COLUMNS = ("id", "response_id", "item", "model", "key_id", "tenant", "task", "kind", "label",
                     "correct_answer", "rating", "comment", "input", "prediction", "prediction_sha256", "truncated",
                     "correct", "created")


def put_feedback(conn: sqlite3.Connection, row: FeedbackRow) -> bool:
    """Store `row`, replacing an earlier feedback on the same item; True when one was replaced."""
    values = [getattr(row, c) for c in _FEEDBACK_COLUMNS]
    conn.execute("BEGIN IMMEDIATE")
    try:
        replaced = conn.execute("DELETE FROM feedback WHERE response_id = ? AND item = ?",
                                (row.response_id, row.item)).rowcount > 0
        conn.execute(f"INSERT INTO feedback ({', '.join(_FEEDBACK_COLUMNS)}) VALUES "
                     f"({', '.join('?' * len(_FEEDBACK_COLUMNS))})", values)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return replaced


def _row(values: tuple) -> FeedbackRow:
    data = dict(zip(_FEEDBACK_COLUMNS, values))
    data["truncated"] = bool(data["truncated"])
    data["correct"] = None if data["correct"] is None else bool(data["correct"])
    return FeedbackRow(**data)


def recent_feedback(conn: sqlite3.Connection, model: str, since: float, limit: int,
                    kind: str | None = None) -> list[FeedbackRow]:
    """The newest `limit` feedback rows (of `kind`, or all) on `model` given at or after `since`, newest first."""
    cursor = conn.execute(f"SELECT {', '.join(_FEEDBACK_COLUMNS)} FROM feedback WHERE model = ? AND created >= ? "
                          "AND kind = coalesce(?, kind) ORDER BY created DESC LIMIT ?", (model, since, kind, limit))
    return [_row(v) for v in cursor.fetchall()]


def models_with_feedback(conn: sqlite3.Connection, since: float, limit: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT model FROM feedback WHERE created >= ? LIMIT ?",
                                       (since, limit)).fetchall()]


def read_feedback(path: str | Path, model: str | None = None, since: float | None = None) -> Iterator[FeedbackRow]:
    """Every feedback row of the store at `path` (oldest first), optionally of one model / since a time.
    Opens the file read-only; a missing or foreign file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no feedback store at {path}", "pass the server's feedback.path (default "
                        "<artifacts_dir>/.tuneserve-feedback.db)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        _check_version(conn, path)
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path} is not a tuneserve feedback store ({exc})", "pass the server's feedback.path") from None
    try:
        clauses, params = ["1 = 1"], []
        if model is not None:
            clauses.append("model = ?")
            params.append(model)
        if since is not None:
            clauses.append("created >= ?")
            params.append(since)
        cursor = conn.execute(f"SELECT {', '.join(_FEEDBACK_COLUMNS)} FROM feedback WHERE {' AND '.join(clauses)} "
                              "ORDER BY created", params)
        for values in cursor:
            yield _row(values)
    finally:
        conn.close()

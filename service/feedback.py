"""Production feedback: what each served response was (bounded), the feedback users give on it (durable),
and the rolling online quality per model (adapter version), exported as metrics.

    store = FeedbackStore(settings.feedback, settings.artifacts_dir)
    store.start()
    store.served("cls-1", "clf", principal, "classification", ["I want my money"], ["refund"], labels=[...])
    reply = await store.feedback(FeedbackRequest(id="cls-1", label="refund"), principal)
    store.online_quality("clf")     # OnlineQuality(kind="accuracy", value=1.0, n=1), or None
    store.stop()                    # flushes the served records still queued

The serving core (service/core.py) owns one store and calls `served` for every reply it makes; the
transports reach `feedback` through `ServingBackend.feedback`.

Where things live and why (docs/feedback.md): served records go to an in-memory LRU (bounded by
`served_cache_size`, expiring after `served_ttl_s`) and, through one bounded background writer thread,
to the SQLite file `training/artifact/feedback.py` defines (the same file `tuneserve data import-feedback`
reads). With several Engine replicas (Ray) the feedback POST may reach a replica that did not serve
the response: it finds the record in the shared file. Feedback rows are written there too, so the
online quality every replica computes (a query over the newest `window` scored rows younger than
`window_s`) is the same and survives restarts. SQLite does its own file locking, so replicas on one
node (or on a shared volume with working POSIX locks) share the file safely. Nothing here runs on
the event loop: `feedback` runs in a worker thread, `served` only enqueues.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from training.artifact import feedback as disk
from training.artifact.config import StrictModel
from training.artifact.errors import Conflict, InvalidRequest, NotFound, TuneserveError, Unavailable
from training.artifact.paths import cache_dir

from service import metrics
from service.errors import with_param
from service.feedback_schemas import FeedbackRequest, FeedbackResponse

log = logging.getLogger("tuneserve.service.feedback")
STORE_NAME = ".tuneserve-feedback.db"
MAX_MODELS = 256  # models whose label sets / gauges this replica tracks (label values are capped anyway)
RESPONSE_ID = re.compile(r"^(cmpl|chatcmpl|cls)-[0-9a-f]{24}$")  # what service/core.py's _id makes


class FeedbackSettings(StrictModel):
    enabled: bool = Field(True, description="remember served responses and accept POST /v1/feedback")
    path: Path | None = Field(None, description=f"the SQLite store; default <artifacts_dir>/{STORE_NAME} "
                              "(the shared volume in k8s), else <cache>/feedback/feedback.db")
    journal: Literal["wal", "delete"] = Field("wal", description="SQLite journal: wal (local disks), delete "
                                              "(network filesystems where WAL's shared memory does not work)")
    store_inputs: bool = Field(True, description="keep each request's input text (bounded) with its record, so "
                               "`tuneserve data import-feedback` can build training rows; false keeps none (privacy)")
    max_input_chars: int = Field(2000, ge=0, le=100_000, description="input text kept per item")
    max_prediction_chars: int = Field(2000, ge=16, le=100_000, description="generated text kept per item "
                                      "(its sha256 covers all of it)")
    max_items: int = Field(64, ge=1, le=4096, description="items (inputs x choices) remembered per response")
    served_ttl_s: float = Field(7 * 86400, gt=0, description="feedback on a response is accepted this long")
    served_cache_size: int = Field(10_000, ge=0, description="served records kept in memory (LRU)")
    served_max_rows: int = Field(1_000_000, ge=1, description="served records kept in the store (oldest dropped)")
    write_queue: int = Field(4096, ge=1, description="served records waiting for the writer; past it they are "
                             "dropped (logged, counted) rather than slowing serving")
    window: int = Field(200, ge=1, le=100_000, description="online quality: the newest this many scored feedbacks")
    window_s: float = Field(86400.0, gt=0, description="online quality: ... no older than this")
    refresh_s: float = Field(15.0, gt=0, description="how often the quality gauges are recomputed from the store")
    lookup_retry_s: float = Field(0.2, ge=0, le=5, description="a well-formed id not found is looked up once more "
                                  "after this (another replica's writer may not have stored it yet); 0: no retry")


def store_path(settings: FeedbackSettings, artifacts_dir: Path | None) -> Path:
    if settings.path is not None:
        return Path(settings.path)
    return Path(artifacts_dir) / STORE_NAME if artifacts_dir else cache_dir() / "feedback" / "feedback.db"


@dataclass(frozen=True)
class OnlineQuality:
    """`kind`: "accuracy" (classifiers: share of label feedback agreeing with the served label) or
    "rating" (generation: mean rating, 1..5); `value` in those units; `n`: the feedbacks it averages."""

    kind: Literal["accuracy", "rating"]
    value: float
    n: int


def _cut(text: str | None, limit: int) -> tuple[str | None, bool]:
    if text is None:
        return None, False
    return text[:limit], len(text) > limit


def _not_found(response_id: str) -> NotFound:
    return with_param(NotFound(f"no response {response_id[:128]!r} to give feedback on: unknown, expired, or "
                               "not served to this key", "send the `id` of a reply this key (or its tenant) "
                               "received within the feedback window"), "id")


class FeedbackStore:
    def __init__(self, settings: FeedbackSettings, artifacts_dir: Path | None = None) -> None:
        self.settings = settings
        self.path = store_path(settings, artifacts_dir)
        self._conn: sqlite3.Connection | None = None
        self._db = threading.Lock()
        self._recent: OrderedDict[str, disk.ServedRecord] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._labels: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._queue: queue.Queue = queue.Queue(maxsize=settings.write_queue)
        self._writer: threading.Thread | None = None
        self._refreshed_at = 0.0
        self.dropped = 0
        self.broken: str | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        if not self.settings.enabled or self._writer is not None:
            return
        try:
            self._conn = disk.connect(self.path, self.settings.journal)
        except (sqlite3.Error, OSError, TuneserveError) as exc:  # serving goes on; feedback answers 503
            self.broken = str(exc)
            log.error("feedback store %s unusable, feedback is off: %s", self.path, exc)
            return
        self._writer = threading.Thread(target=self._write_loop, name="tuneserve-feedback-writer", daemon=True)
        self._writer.start()

    def stop(self) -> None:
        if self._writer is not None:
            self._queue.put(None)  # after every record already queued: they are written first
            self._writer.join(timeout=30)
            self._writer = None
        if self._conn is not None:
            with self._db:
                self._conn.close()
            self._conn = None

    def _write_loop(self) -> None:
        written_since_prune = 0
        while True:
            batch, done = [self._queue.get()], False
            while len(batch) < 512:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                batch, done = [r for r in batch if r is not None], True
            try:
                with self._db:
                    if batch:
                        disk.put_served(self._conn, batch)
                    written_since_prune += len(batch)
                    if written_since_prune >= 1000 or done:
                        disk.prune_served(self._conn, time.time() - self.settings.served_ttl_s,
                                          self.settings.served_max_rows)
                        written_since_prune = 0
            except sqlite3.Error:
                log.exception("cannot write %d served records to %s", len(batch), self.path)
            if done:
                return

    # ---- served responses ----------------------------------------------------------------
    def served(self, response_id: str, model: str, principal: Any, task: str, inputs: list[str | None],
               predictions: list[str], labels: list[str] | None = None) -> None:
        """Remember a reply: item i is `inputs[i]` answered with `predictions[i]` (a label or a text).
        Never blocks: a full write queue drops the durable copy (the in-memory one stays)."""
        if not self.settings.enabled:
            return
        s = self.settings
        items = []
        for text, prediction in list(zip(inputs, predictions))[:s.max_items]:
            kept, _ = _cut(text if s.store_inputs else None, s.max_input_chars)
            cut, truncated = _cut(prediction, s.max_prediction_chars)
            digest = hashlib.sha256(prediction.encode()).hexdigest() if task == "generation" else ""
            items.append(disk.ServedItem(kept, cut or "", digest, truncated))
        record = disk.ServedRecord(response_id, model, getattr(principal, "key_id", ""), getattr(principal, "owner", ""),
                                   task, items, time.time())
        with self._recent_lock:
            if labels:
                self._labels[model] = tuple(labels)
                self._labels.move_to_end(model)
                while len(self._labels) > MAX_MODELS:
                    self._labels.popitem(last=False)
            if s.served_cache_size:
                self._recent[response_id] = record
                while len(self._recent) > s.served_cache_size:
                    self._recent.popitem(last=False)
        if self._writer is None:
            return
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            metrics.feedback_records_dropped()
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("feedback writer is behind: %d served records not stored durably", self.dropped)

    def lookup(self, response_id: str) -> disk.ServedRecord | None:
        """The served record of `response_id` when it has not expired: this replica's memory, else the store."""
        oldest = time.time() - self.settings.served_ttl_s
        with self._recent_lock:
            record = self._recent.get(response_id)
            if record is not None:
                self._recent.move_to_end(response_id)
        if record is None and self._conn is not None:
            with self._db:
                record = disk.get_served(self._conn, response_id)
        return record if record is not None and record.created >= oldest else None

    # ---- feedback ------------------------------------------------------------------------
    async def feedback(self, request: FeedbackRequest, principal: Any) -> FeedbackResponse:
        """`submit` off the event loop; an id that is not ours is refused without touching the store."""
        self._check_enabled()
        if not RESPONSE_ID.match(request.id):
            raise _not_found(request.id)
        record = await asyncio.to_thread(self.lookup, request.id)
        if record is None and self.settings.lookup_retry_s:
            await asyncio.sleep(self.settings.lookup_retry_s)
            record = await asyncio.to_thread(self.lookup, request.id)
        return await asyncio.to_thread(self.submit, request, principal, record)

    def _check_enabled(self) -> None:
        if not self.settings.enabled:
            raise Conflict("feedback is turned off on this server", "an operator can set feedback.enabled=true")
        if self._conn is None:
            raise Unavailable("the feedback store is not available", "retry later; the server log names the cause")

    def submit(self, request: FeedbackRequest, principal: Any, record: disk.ServedRecord | None = None) -> FeedbackResponse:
        """Check `request` against what was served (`record`, else looked up) to whom and store it
        (blocking: call in a thread)."""
        self._check_enabled()
        record = record or self.lookup(request.id)
        if record is None or not _may_see(principal, record):
            raise _not_found(request.id)  # the same answer for another tenant's id: existence is not leaked
        if request.index >= len(record.items):
            raise with_param(InvalidRequest(f"response {request.id!r} has {len(record.items)} item(s); index "
                                            f"{request.index} is out of range", "index counts the classified "
                                            "inputs or the choices from 0"), "index")
        item = record.items[request.index]
        kind = request.kind
        self._check_value(request, record)
        correct = (request.label == item.prediction) if kind == "label" else None
        row = disk.FeedbackRow(
            id=f"fb-{secrets.token_hex(12)}", response_id=record.response_id, item=request.index, model=record.model,
            key_id=getattr(principal, "key_id", ""), tenant=getattr(principal, "owner", ""), task=record.task,
            kind=kind, created=time.time(), label=request.label, correct_answer=request.correct_answer,
            rating=request.rating, comment=request.comment, input=item.input, prediction=item.prediction,
            prediction_sha256=item.sha256 or None, truncated=item.truncated, correct=correct)
        try:
            with self._db:
                replaced = disk.put_feedback(self._conn, row)
        except sqlite3.Error as exc:
            log.error("cannot store feedback in %s: %s", self.path, exc)
            raise Unavailable("the feedback store is not writable right now", "retry in a moment") from None
        metrics.feedback_recorded(record.model, kind)
        self._refresh(record.model)
        return FeedbackResponse(id=row.id, response_id=record.response_id, index=request.index, model=record.model,
                                kind=kind, created=int(row.created), replaced=replaced)

    def _check_value(self, request: FeedbackRequest, record: disk.ServedRecord) -> None:
        if record.task == "classification":
            if request.correct_answer is not None:
                raise with_param(InvalidRequest("correct_answer is for generated replies; this was a classification",
                                                "send the right class as `label`"), "correct_answer")
            with self._recent_lock:
                labels = self._labels.get(record.model)
            if request.label is not None and labels and request.label not in labels:
                shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
                raise with_param(InvalidRequest(f"{request.label[:64]!r} is not a label of {record.model!r}",
                                                f"its labels: {shown}"), "label")
        elif request.label is not None:
            raise with_param(InvalidRequest("label is for classifications; this was a generated reply",
                                            "send `correct_answer` (the right text) or `rating`"), "label")

    # ---- online quality --------------------------------------------------------------------
    def online_quality(self, model_id: str, since: float | None = None, window: int | None = None) -> OnlineQuality | None:
        """The rolling online quality of `model_id` (a resolved id: an adapter version or a model), from
        the durable store, so every replica answers the same: for a classifier (its latest feedback was
        on a classification) `OnlineQuality("accuracy", share of label feedbacks whose label equals the
        served one, n)`, else `OnlineQuality("rating", mean rating 1..5, n)`, over the newest
        `feedback.window` such feedbacks no older than `feedback.window_s`. None when there are none
        (or feedback is off). `since` (unix time, e.g. when a canary started) and `window` narrow it
        further. Stable API: rollout gating (promote/rollback) builds on it."""
        if self._conn is None:
            return None
        since = max(time.time() - self.settings.window_s, since or 0.0)
        window = min(window or self.settings.window, self.settings.window)
        with self._db:
            task = self._conn.execute("SELECT task FROM feedback WHERE model = ? AND created >= ? "
                                      "ORDER BY created DESC LIMIT 1", (model_id, since)).fetchone()
            if task is None:
                return None
            kind = "label" if task[0] == "classification" else "rating"
            rows = disk.recent_feedback(self._conn, model_id, since, window, kind)
        if not rows:
            return None
        if kind == "label":
            return OnlineQuality("accuracy", sum(bool(r.correct) for r in rows) / len(rows), len(rows))
        return OnlineQuality("rating", sum(r.rating for r in rows) / len(rows), len(rows))

    def _refresh(self, model: str) -> None:
        quality = self.online_quality(model)
        if quality is not None:
            metrics.online_quality(model, quality.kind, quality.value, quality.n)

    def refresh_gauges(self, force: bool = False) -> None:
        """Recompute the gauges of every model with feedback in the window (other replicas' feedback
        included), at most every `refresh_s`; the metrics poll of the core calls it."""
        now = time.time()
        if self._conn is None or (not force and now - self._refreshed_at < self.settings.refresh_s):
            return
        self._refreshed_at = now
        with self._db:
            models = disk.models_with_feedback(self._conn, now - self.settings.window_s, MAX_MODELS)
        for model in models:
            self._refresh(model)
        metrics.online_quality_expired(set(models))


def _may_see(principal: Any, record: disk.ServedRecord) -> bool:
    """A key may give feedback on responses it, or another key of its owner (tenant), received, for
    models it may still use. `principal=None` (in-process callers) may on any."""
    if principal is None:
        return True
    same = principal.key_id == record.key_id or (bool(record.tenant) and principal.owner == record.tenant)
    return same and principal.may_use(record.model)

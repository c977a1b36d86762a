"""The feedback store without a model: validation, scoping, bounds (LRU, TTL, write queue), durability
across restarts and replicas, online quality and its gauges.  Run: pytest tests/test_feedback_store.py
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from service import metrics
from service.auth import Principal
from service.feedback import FeedbackSettings, FeedbackStore
from service.feedback_schemas import FeedbackRequest
from training.artifact import feedback as disk
from training.artifact.errors import Conflict, InvalidRequest, NotFound, Unavailable

ALICE = Principal("k-alice", "acme", adapters=("clf*", "gen"))
ALICE2 = Principal("k-alice2", "acme", adapters=("*",))  # same tenant, another key
MALLORY = Principal("k-mallory", "evil", adapters=("*",))
NARROW = Principal("k-narrow", "acme", adapters=("gen",))  # same tenant, may not use clf


def rid(n: int, prefix: str = "cls") -> str:
    return f"{prefix}-{n:024x}"


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(**fields) -> FeedbackStore:
        settings = FeedbackSettings(path=tmp_path / "fb.db", refresh_s=0.01, lookup_retry_s=0, **fields)
        store = FeedbackStore(settings)
        store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.stop()


def give(store, principal=ALICE, **body):
    return asyncio.run(store.feedback(FeedbackRequest(**body), principal))


def test_request_needs_exactly_one_value_in_range():
    with pytest.raises(InvalidRequest) as err:
        FeedbackRequest(id=rid(1), label="a", rating=3)
    assert err.value.param == "rating"
    with pytest.raises(InvalidRequest):
        FeedbackRequest(id=rid(1))
    for bad in ({"rating": 6}, {"rating": 0}, {"rating": "5"}, {"label": ""}, {"rating": 3, "comment": "x" * 1001},
                {"rating": 3, "index": -1}, {"rating": 3, "extra": 1}):
        with pytest.raises(ValidationError):
            FeedbackRequest(id=rid(1), **bad)
    assert FeedbackRequest(id=rid(1), rating=1).kind == "rating"


def test_label_feedback_scoped_validated_and_scored(make_store):
    store = make_store()
    store.served(rid(1), "clf-v2", ALICE, "classification", ["refund please", "hello"], ["refund", "greeting"],
                 labels=["refund", "greeting", "other"])
    reply = give(store, id=rid(1), index=1, label="other", comment="not a greeting")
    assert (reply.model, reply.kind, reply.index, reply.replaced) == ("clf-v2", "label", 1, False)
    assert give(store, ALICE2, id=rid(1), index=0, label="refund").model == "clf-v2"  # same tenant
    for principal in (MALLORY, NARROW):  # another tenant / a key that may not use the model: as if unknown
        with pytest.raises(NotFound) as err:
            give(store, principal, id=rid(1), label="refund")
        assert err.value.param == "id"
    with pytest.raises(NotFound):
        give(store, id=rid(99), label="refund")
    with pytest.raises(NotFound):
        give(store, id="../../etc/passwd", label="refund")
    for body, param in [({"index": 2, "label": "refund"}, "index"), ({"label": "nope"}, "label"),
                        ({"correct_answer": "refund"}, "correct_answer")]:
        with pytest.raises(InvalidRequest) as err:
            give(store, id=rid(1), **body)
        assert err.value.param == param
    quality = store.online_quality("clf-v2")
    assert (quality.kind, quality.value, quality.n) == ("accuracy", 0.5, 2)
    assert give(store, id=rid(1), index=1, label="greeting").replaced  # the latest feedback on an item wins
    assert store.online_quality("clf-v2").value == 1.0 and store.online_quality("clf-v2").n == 2
    assert store.online_quality("never-served") is None


def test_rating_on_generation_and_gauges(make_store):
    store = make_store(window=3)
    for i, rating in enumerate([5, 5, 1, 2]):
        store.served(rid(i, "cmpl"), "gen", ALICE, "generation", ["q"], ["a long answer"])
        give(store, id=rid(i, "cmpl"), rating=rating)
    quality = store.online_quality("gen")
    assert quality.kind == "rating" and quality.n == 3 and quality.value == pytest.approx((5 + 1 + 2) / 3)
    assert store.online_quality("gen", window=1).value == 2  # the newest only
    assert store.online_quality("gen", since=time.time() + 1) is None  # e.g. since a canary started
    assert metrics.ONLINE_QUALITY.labels("gen", "rating")._value.get() == pytest.approx(8 / 3)
    assert metrics.ONLINE_QUALITY_SAMPLES.labels("gen", "rating")._value.get() == 3
    with pytest.raises(InvalidRequest) as err:
        give(store, id=rid(0, "cmpl"), label="x")
    assert err.value.param == "label"


def test_bounds_truncate_and_privacy(make_store):
    store = make_store(max_prediction_chars=16, max_input_chars=4, max_items=2, served_cache_size=2)
    store.served(rid(1, "cmpl"), "gen", ALICE, "generation", ["abcdefgh"] * 3, ["x" * 40] * 3)
    record = store.lookup(rid(1, "cmpl"))
    assert len(record.items) == 2 and record.items[0].input == "abcd"
    assert record.items[0].prediction == "x" * 16 and record.items[0].truncated
    for i in range(2, 6):
        store.served(rid(i, "cmpl"), "gen", ALICE, "generation", ["q"], ["a"])
    assert len(store._recent) == 2 and rid(1, "cmpl") not in store._recent  # the in-memory LRU is bounded
    store.stop()
    store.start()
    assert store.lookup(rid(1, "cmpl")).items[0].input == "abcd"  # ... older records come from the store
    private = make_store(store_inputs=False)
    private.served(rid(9, "cmpl"), "gen", ALICE, "generation", ["secret prompt"], ["a"])
    private.stop()
    reopened = make_store(store_inputs=False)
    assert reopened.lookup(rid(9, "cmpl")).items[0].input is None


def test_ttl_expires_records(make_store):
    store = make_store(served_ttl_s=0.05)
    store.served(rid(1), "clf", ALICE, "classification", ["t"], ["a"])
    assert store.lookup(rid(1)) is not None
    time.sleep(0.1)
    with pytest.raises(NotFound):
        give(store, id=rid(1), label="a")


def test_full_write_queue_drops_durable_copy_without_blocking(make_store, monkeypatch):
    store = make_store(write_queue=1)
    store._db.acquire()  # the writer is stuck: the queue fills
    try:
        started = time.perf_counter()
        for i in range(50):
            store.served(rid(i), "clf", ALICE, "classification", ["t"], ["a"])
        assert time.perf_counter() - started < 1.0 and store.dropped >= 40
    finally:
        store._db.release()


def test_survives_restart_and_serves_another_replica(make_store, tmp_path):
    first = make_store()
    first.served(rid(7), "clf", ALICE, "classification", ["t"], ["a"], labels=["a", "b"])
    other = make_store()  # a second replica on the same file, started before the first flushed
    first.stop()  # flushes the writer
    assert give(other, ALICE2, id=rid(7), label="b").model == "clf"  # served by `first`, answered by `other`
    other.stop()
    again = make_store()
    assert again.online_quality("clf").value == 0.0
    rows = list(disk.read_feedback(tmp_path / "fb.db"))
    assert [(r.response_id, r.label, r.prediction, r.input, r.correct) for r in rows] == [(rid(7), "b", "a", "t", False)]


def test_disabled_store_refuses(tmp_path):
    store = FeedbackStore(FeedbackSettings(enabled=False, path=tmp_path / "fb.db"))
    store.start()
    store.served(rid(1), "clf", ALICE, "classification", ["t"], ["a"])
    with pytest.raises(Conflict):
        give(store, id=rid(1), label="a")
    assert not (tmp_path / "fb.db").exists()


def test_unusable_store_leaves_serving_alone(tmp_path):
    (tmp_path / "file").write_text("x")
    store = FeedbackStore(FeedbackSettings(path=tmp_path / "file" / "fb.db"))  # its parent is a file
    store.start()
    assert store.broken
    store.served(rid(1), "clf", ALICE, "classification", ["t"], ["a"])  # remembered in memory, nothing queued
    assert store._queue.qsize() == 0 and store.dropped == 0
    with pytest.raises(Unavailable):
        give(store, id=rid(1), label="a")
    store.stop()

"""The error hierarchy: every user-facing error keeps its message, hint and extras across pickling."""

from __future__ import annotations

import pickle

import pytest

from training.artifact import errors


@pytest.mark.parametrize("cls", [c for c in vars(errors).values()
                                 if isinstance(c, type) and issubclass(c, errors.TuneserveError)])
def test_pickle_round_trip_keeps_hint(cls):
    error = cls("what was wrong", "what to do")
    error.param = "field"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.message, copy.hint, copy.param) == ("what was wrong", "what to do", "field")
    assert str(copy) == "what was wrong (what to do)"


def test_rate_limited_keeps_retry_after():
    copy = pickle.loads(pickle.dumps(errors.RateLimited("slow down", "wait", retry_after=2.5)))
    assert copy.retry_after == 2.5

"""Load shapes for locust: `soak` (ramp up, then hold the users steady) and `burst` (a base load
with periodic bursts to the full user count). Plain step functions, so they test without locust;
loadtests/locustfile.py wraps the one named by TUNESERVE_SHAPE in a `LoadTestShape`.

    tick = shape_tick("burst", users=16, duration_s=120)
    tick(35.0)   # -> (16, 16.0): users wanted at 35 s and the spawn rate; None once the run is over

burst: quarter load (at least 1 user) for `period_s`, full load for `period_s / 2`, repeated.
"""

from __future__ import annotations

from typing import Callable

Tick = Callable[[float], "tuple[int, float] | None"]
SHAPES = ("soak", "burst")


def soak(users: int, duration_s: float, ramp_s: float = 10.0) -> Tick:
    """Ramp to `users` over `ramp_s`, hold until `duration_s`."""
    def tick(elapsed: float) -> tuple[int, float] | None:
        if elapsed >= duration_s:
            return None
        return users, max(users / max(ramp_s, 0.001), 1.0)
    return tick


def burst(users: int, duration_s: float, period_s: float = 30.0) -> Tick:
    """`max(1, users // 4)` users, then all `users` for half a period, again and again."""
    base = max(1, users // 4)

    def tick(elapsed: float) -> tuple[int, float] | None:
        if elapsed >= duration_s:
            return None
        in_cycle = elapsed % (1.5 * period_s)
        return (users if in_cycle >= period_s else base), float(users)  # bursts arrive at once
    return tick


def shape_tick(name: str, users: int, duration_s: float, period_s: float = 30.0) -> Tick:
    if name == "soak":
        return soak(users, duration_s)
    if name == "burst":
        return burst(users, duration_s, period_s)
    raise ValueError(f"unknown load shape {name!r}: use one of {', '.join(SHAPES)}")

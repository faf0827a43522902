"""Load profiles over time, as plain functions the locust `LoadTestShape`s in loadtest/ call.

Each takes the seconds since the start, the peak user count and the duration, and returns what a
`LoadTestShape.tick()` returns: (users, spawn rate per second), or None to end the run. Every user
runs at a fixed request rate (see the locustfile's --rps), so users stand for request rate:
  constant  the peak for the whole run (a constant request rate);
  steps     a quarter of the peak, then half, three quarters and the peak, in equal steps;
  spike     a quarter of the peak, the peak during the middle fifth of the run, a quarter again.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Tick = tuple[int, float] | None
Profile = Callable[[float, int, float], Tick]
STEPS = 4


def constant(t: float, users: int, duration: float) -> Tick:
    return (users, float(users)) if t < duration else None


def steps(t: float, users: int, duration: float) -> Tick:
    if t >= duration:
        return None
    step = min(int(t / (duration / STEPS)), STEPS - 1)
    return max(1, math.ceil(users * (step + 1) / STEPS)), float(users)


def spike(t: float, users: int, duration: float) -> Tick:
    if t >= duration:
        return None
    base = max(1, math.ceil(users / 4))
    in_spike = 0.4 * duration <= t < 0.6 * duration
    return (users if in_spike else base), float(users)


SHAPES: dict[str, Profile] = {"constant": constant, "steps": steps, "spike": spike}

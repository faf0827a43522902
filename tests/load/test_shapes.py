"""The load profiles the locust shapes follow: (users, spawn rate) over time, None at the end."""

from __future__ import annotations

from serving.load.shapes import constant, spike, steps


def test_constant_holds_the_peak_until_the_end() -> None:
    assert [constant(t, 10, 20) for t in (0, 10, 19.9)] == [(10, 10.0)] * 3
    assert constant(20, 10, 20) is None


def test_steps_climb_in_four_equal_steps() -> None:
    users = [steps(t, 8, 40)[0] for t in (0, 9.9, 10, 20, 30, 39.9)]  # type: ignore[index]
    assert users == [2, 2, 4, 6, 8, 8]
    assert steps(40, 8, 40) is None
    assert steps(0, 1, 40) == (1, 1.0)  # never zero users


def test_spike_is_the_peak_for_the_middle_fifth_only() -> None:
    users = [spike(t, 40, 100)[0] for t in (0, 39, 40, 59, 60, 99)]  # type: ignore[index]
    assert users == [10, 10, 40, 40, 10, 10]
    assert spike(100, 40, 100) is None

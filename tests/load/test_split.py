"""Observed split against the configured weights, within binomial bounds."""

from __future__ import annotations

import pytest

from serving.load.split import compare_split


def test_counts_near_the_weights_are_within_three_sigma() -> None:
    stable, canary = compare_split({"stable": 905, "canary": 95}, {"stable": 90, "canary": 10})
    assert stable.within and canary.within
    assert canary.expected == pytest.approx(100)
    assert canary.z == pytest.approx(-5 / (1000 * 0.1 * 0.9) ** 0.5)
    assert canary.share == pytest.approx(0.095)


def test_a_skewed_split_is_flagged() -> None:
    rows = compare_split({"stable": 600, "canary": 400}, {"stable": 50, "canary": 50})
    assert [r.within for r in rows] == [False, False]
    assert rows[0].z == pytest.approx(100 / (1000 * 0.25) ** 0.5)


def test_zero_and_full_weights_must_be_exact() -> None:
    assert compare_split({"stable": 10}, {"stable": 100})[0].within
    zero = compare_split({"stable": 9, "canary": 1}, {"stable": 100, "canary": 0})
    assert [r.within for r in zero] == [False, False] and zero[1].z is None


def test_a_predictor_missing_from_the_weights_counts_as_weight_zero() -> None:
    rows = compare_split({"stable": 10, "other": 2}, {"stable": 100})
    assert [(r.predictor, r.weight, r.within) for r in rows] == [
        ("stable", 100.0, False),
        ("other", 0.0, False),
    ]


def test_a_weighted_predictor_that_served_nothing_is_reported() -> None:
    rows = compare_split({"stable": 1000}, {"stable": 90, "canary": 10})
    assert rows[1].predictor == "canary" and rows[1].requests == 0 and not rows[1].within

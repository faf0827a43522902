"""The observed traffic split against the configured weights, within binomial bounds.

With N routed requests and a predictor weighted w% the count it serves is Binomial(N, w/100):
expected N*w/100, standard deviation sqrt(N*p*(1-p)). A count more than `sigmas` deviations
away (3 by default: a false alarm about 3 times in 1000 per predictor) says the split is not the
one configured. A predictor weighted 0% or 100% must get exactly none or all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

SIGMAS = 3.0


@dataclass(frozen=True)
class SplitRow:
    predictor: str
    weight: float
    """Configured percent of requests."""
    requests: int
    share: float
    """Observed fraction of the routed requests."""
    expected: float
    """Expected count, N * weight / 100."""
    z: float | None
    """(requests - expected) / sd; None where sd is 0 (a weight of 0 or 100)."""
    within: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_split(
    counts: Mapping[str, int], weights: Mapping[str, float], sigmas: float = SIGMAS
) -> list[SplitRow]:
    """One row per predictor in either mapping, weights order first. Weights are percentages and
    are normalised by their sum (a lone predictor's 100 stays 100)."""
    total_weight = sum(weights.values())
    n = sum(counts.values())
    names = list(weights) + [p for p in counts if p not in weights]
    rows = []
    for name in names:
        weight = float(weights.get(name, 0))
        p = weight / total_weight if total_weight else 0.0
        x = counts.get(name, 0)
        expected = n * p
        sd = math.sqrt(n * p * (1 - p))
        z = (x - expected) / sd if sd > 0 else None
        within = abs(z) <= sigmas if z is not None else math.isclose(x, expected)
        rows.append(SplitRow(name, weight, x, x / n if n else 0.0, expected, z, within))
    return rows

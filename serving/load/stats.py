"""What a load test measured, in plain types the gate, the split check and the reports share.

The locustfile records every request under the predictor that served it (the `x-seldon-predictor`
response header, or the gRPC trailing metadata of that name): locust's stats entry is named
`infer [<predictor>]`. At the end it turns locust's entries into `Observed` rows, one per
predictor and one overall; nothing below this line imports locust (which monkey-patches the
process with gevent on import).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

UNKNOWN = "unknown"
"""Stands for the predictor of a request whose answer named none (refused, reset, timed out)."""
OVERALL = "overall"
_ENTRY = re.compile(r"^infer \[(?P<predictor>[^\]]+)\]$")


def entry_name(predictor: str | None) -> str:
    """The locust stats entry a request served by `predictor` is recorded under."""
    return f"infer [{predictor or UNKNOWN}]"


def predictor_of(name: str) -> str | None:
    """The predictor a stats entry name stands for; None for entries that are not inferences."""
    match = _ENTRY.match(name)
    return match["predictor"] if match else None


@dataclass(frozen=True)
class Observed:
    """One scope of a run: a predictor's requests, or all of them (`scope == "overall"`)."""

    scope: str
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float
    """Requests per second over the run (all of them, failed ones included)."""

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"error_rate": self.error_rate}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observed:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

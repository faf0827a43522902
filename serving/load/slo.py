"""The SLO gate: judge a run against the spec's `slo` section and say which SLO failed, by how much.

Latency (p95Ms, p99Ms) and error rate (maxErrorRate) are judged overall and for every predictor
that served requests; throughput (minRps) overall only, since a canary at 10% is not meant to
carry the whole rate. A scope with fewer than `min_requests` requests cannot be judged: the
verdict is then "inconclusive", which fails the run like a breach does (too little data is never
a pass). The locustfile calls `judge` on locust's `quitting` event and exits with `exit_code`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..spec import Slo
from .stats import Observed

MIN_REQUESTS = 20
"""Fewest requests a scope needs before its percentiles and error rate are judged."""


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"  # at least one SLO breached
    INCONCLUSIVE = "inconclusive"  # no breach, but some scope had too few requests to judge


@dataclass(frozen=True)
class Breach:
    """One SLO a scope missed: `slo` is its key in the values file (slo.p95Ms ...)."""

    scope: str
    slo: str
    observed: float
    limit: float

    def describe(self) -> str:
        o, lim = self.observed, self.limit
        if self.slo in ("p95Ms", "p99Ms"):
            what = "p95" if self.slo == "p95Ms" else "p99"
            return (
                f"{self.scope}: {what} latency {o:.1f} ms exceeds slo.{self.slo} {lim:g} ms "
                f"by {o - lim:.1f} ms ({o / lim:.1f}x the budget)"
            )
        if self.slo == "maxErrorRate":
            ratio = f" ({o / lim:.1f}x the budget)" if lim else ""
            return (
                f"{self.scope}: error rate {o:.2%} exceeds slo.maxErrorRate {lim:.2%} "
                f"by {(o - lim) * 100:.2f} points{ratio}"
            )
        return (
            f"{self.scope}: throughput {o:.1f} req/s is below slo.minRps {lim:g} req/s "
            f"by {lim - o:.1f} req/s ({(lim - o) / lim:.0%} short)"
        )


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    breaches: list[Breach] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)
    """Scopes with too few requests, each with its count."""

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict is Verdict.PASSED else 1

    def report(self) -> str:
        if self.verdict is Verdict.PASSED:
            lines = ["SLO gate: PASSED"]
        elif self.verdict is Verdict.FAILED:
            lines = [f"SLO gate: FAILED ({len(self.breaches)} SLO breach(es))"]
        else:
            lines = ["SLO gate: INCONCLUSIVE (too few requests to judge; run longer or faster)"]
        lines += [f"  {b.describe()}" for b in self.breaches]
        lines += [f"  not judged: {u}" for u in self.unjudged]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "exitCode": self.exit_code,
            "breaches": [b.__dict__ | {"message": b.describe()} for b in self.breaches],
            "unjudged": self.unjudged,
            "text": self.report(),
        }


def _breaches(slo: Slo, o: Observed) -> list[Breach]:
    found = []
    if o.p95_ms > slo.p95_ms:
        found.append(Breach(o.scope, "p95Ms", o.p95_ms, slo.p95_ms))
    if o.p99_ms > slo.p99_ms:
        found.append(Breach(o.scope, "p99Ms", o.p99_ms, slo.p99_ms))
    if o.error_rate > slo.max_error_rate:
        found.append(Breach(o.scope, "maxErrorRate", o.error_rate, slo.max_error_rate))
    return found


def judge(
    slo: Slo, overall: Observed, predictors: list[Observed], min_requests: int = MIN_REQUESTS
) -> GateResult:
    """The verdict on one run: `overall` and one `Observed` per predictor that served requests."""
    breaches: list[Breach] = []
    unjudged: list[str] = []
    for o in [overall, *predictors]:
        if o.requests < min_requests:
            unjudged.append(f"{o.scope}: {o.requests} requests (needs {min_requests})")
            continue
        breaches += _breaches(slo, o)
    if overall.rps < slo.min_rps:
        breaches.append(Breach(overall.scope, "minRps", overall.rps, slo.min_rps))
    if breaches:
        return GateResult(Verdict.FAILED, breaches, unjudged)
    if unjudged:
        return GateResult(Verdict.INCONCLUSIVE, [], unjudged)
    return GateResult(Verdict.PASSED)

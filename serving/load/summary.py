"""The end of a run in one object: per-predictor rows, the split against the weights, the gate.

The locustfile builds it on `quitting`, prints `text()` and writes `summary.json` into the report
folder; `serving loadtest` reads that file back for the report's summary.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec import Slo
from .slo import MIN_REQUESTS, Breach, GateResult, Verdict, judge
from .split import SIGMAS, SplitRow, compare_split
from .stats import UNKNOWN, Observed


@dataclass(frozen=True)
class RunSummary:
    overall: Observed
    predictors: list[Observed]
    weights: dict[str, float] | None
    weights_source: str
    split: list[SplitRow]
    gate: GateResult
    notes: list[str] = field(default_factory=list)
    task_errors: list[str] = field(default_factory=list)
    """Exceptions raised in the load test's own code: the run proves nothing about the service."""

    @property
    def exit_code(self) -> int:
        """The gate's (0 passed, 1 failed or inconclusive), or 2 when the load test itself broke."""
        return 2 if self.task_errors else self.gate.exit_code

    @property
    def split_within_bounds(self) -> bool | None:
        return all(r.within for r in self.split) if self.split else None

    def table(self) -> str:
        split = {r.predictor: r for r in self.split}
        lines = [
            f"{'PREDICTOR':<10} {'REQUESTS':>8} {'FAILED':>7} {'P50 MS':>7} {'P95 MS':>7} "
            f"{'P99 MS':>7} {'REQ/S':>7} {'WEIGHT':>7} {'SHARE':>7} {'Z':>6}  SPLIT"
        ]
        served = {o.scope for o in self.predictors}
        idle = [
            Observed(r.predictor, 0, 0, 0, 0, 0, 0) for r in self.split if r.predictor not in served
        ]
        for o in [*self.predictors, *idle, self.overall]:
            line = (
                f"{o.scope:<10} {o.requests:>8} {o.failures:>7} {o.p50_ms:>7.1f} {o.p95_ms:>7.1f} "
                f"{o.p99_ms:>7.1f} {o.rps:>7.1f}"
            )
            row = split.get(o.scope) if o is not self.overall else None
            if row is not None:
                z = "-" if row.z is None else f"{row.z:+.1f}"
                verdict = "ok" if row.within else f"OUTSIDE {SIGMAS:g} sigma"
                line += f" {row.weight:>6g}% {row.share:>7.1%} {z:>6}  {verdict}"
            lines.append(line)
        lines.append(f"configured weights: {self.weights_source}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def text(self) -> str:
        return self.table() + "\n" + self.verdict()

    def verdict(self) -> str:
        """The SLO gate's report, and whether the load test's own code broke."""
        lines = [self.gate.report()]
        if self.task_errors:
            lines.append(
                f"LOAD TEST BROKEN: {len(self.task_errors)} kind(s) of exception in the users' own "
                "code (see locust.log); the verdict above judged only the requests that ran:"
            )
            lines += [f"  {e}" for e in self.task_errors]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.as_dict(),
            "predictors": [o.as_dict() for o in self.predictors],
            "weights": self.weights,
            "weightsSource": self.weights_source,
            "split": [r.as_dict() for r in self.split],
            "splitWithinBounds": self.split_within_bounds,
            "gate": self.gate.as_dict(),
            "notes": self.notes,
            "taskErrors": self.task_errors,
            "exitCode": self.exit_code,
            "table": self.table(),
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))


def build_summary(
    slo: Slo,
    overall: Observed,
    predictors: list[Observed],
    weights: dict[str, float] | None,
    weights_source: str,
    *,
    min_requests: int = MIN_REQUESTS,
    notes: list[str] | None = None,
    task_errors: list[str] | None = None,
) -> RunSummary:
    notes = list(notes or [])
    counts = {o.scope: o.requests for o in predictors if o.scope != UNKNOWN}
    split: list[SplitRow] = []
    if weights and counts:
        split = compare_split(counts, weights)
    elif weights:
        notes.append("no answer named its predictor (x-seldon-predictor); split not checked")
    gate = judge(slo, overall, predictors, min_requests)
    return RunSummary(
        overall, predictors, weights, weights_source, split, gate, notes, list(task_errors or [])
    )


def read_summary(path: Path) -> RunSummary:
    data = json.loads(path.read_text())
    gate = data["gate"]
    breaches = [Breach(b["scope"], b["slo"], b["observed"], b["limit"]) for b in gate["breaches"]]
    return RunSummary(
        overall=Observed.from_dict(data["overall"]),
        predictors=[Observed.from_dict(o) for o in data["predictors"]],
        weights=data["weights"],
        weights_source=data["weightsSource"],
        split=[SplitRow(**r) for r in data["split"]],
        gate=GateResult(Verdict(gate["verdict"]), breaches, gate["unjudged"]),
        notes=data["notes"],
        task_errors=data["taskErrors"],
    )

"""Judge a candidate against stable on one window of traffic: a verdict with its evidence.

- errors: Agresti-Caffo interval for (candidate - stable) error rate. Failed when even its lower
  bound exceeds the allowed margin; successful when its upper bound is within it; otherwise the
  data cannot tell yet (inconclusive). So a few lucky requests never promote a candidate and one
  unlucky error never rolls it back.
- latency: candidate p99 against stable p99 times a ratio (from histogram buckets); judged once
  the candidate takes traffic, not while it is only mirrored (shadows run at low priority).
- agreement (while mirrored): Wilson interval of the share of rows agreeing with the primary.
Too few requests on either side is inconclusive, never successful.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from statistics import NormalDist

from .metrics_source import PredictorWindow, Window
from .plan import AnalysisSettings


class Verdict(StrEnum):
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"  # metrics could not be read


@dataclass
class Check:
    name: str
    verdict: Verdict
    detail: str


@dataclass
class AnalysisResult:
    verdict: Verdict
    checks: list[Check] = field(default_factory=list)
    window_seconds: float = 0.0

    def summary(self) -> str:
        return "; ".join(f"{c.name} {c.verdict}: {c.detail}" for c in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {"verdict": str(self.verdict), "windowSeconds": round(self.window_seconds, 1),
                "checks": [{**asdict(c), "verdict": str(c.verdict)} for c in self.checks]}


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def error_check(candidate: PredictorWindow, stable: PredictorWindow,
                s: AnalysisSettings) -> Check:
    nc, ns = candidate.requests, stable.requests
    if nc < s.min_requests or ns < s.min_requests:
        return Check("errors", Verdict.INCONCLUSIVE,
                     f"{nc:.0f} candidate / {ns:.0f} stable requests, need {s.min_requests} each")
    # Agresti-Caffo: add one success and one failure to each side.
    pc = (candidate.errors + 1) / (nc + 2)
    ps = (stable.errors + 1) / (ns + 2)
    se = math.sqrt(pc * (1 - pc) / (nc + 2) + ps * (1 - ps) / (ns + 2))
    diff = pc - ps
    z = _z(s.confidence)
    low, high = diff - z * se, diff + z * se
    observed = (f"candidate {candidate.errors:.0f}/{nc:.0f} = {candidate.errors / nc:.2%}, "
                f"stable {stable.errors:.0f}/{ns:.0f} = {stable.errors / ns:.2%}; difference "
                f"in [{low:+.2%}, {high:+.2%}] vs margin {s.max_error_rate_increase:.2%}")
    if low > s.max_error_rate_increase:
        return Check("errors", Verdict.FAILED, observed)
    if high <= s.max_error_rate_increase:
        return Check("errors", Verdict.SUCCESSFUL, observed)
    return Check("errors", Verdict.INCONCLUSIVE, observed)


def latency_check(candidate: PredictorWindow, stable: PredictorWindow,
                  s: AnalysisSettings) -> Check:
    if candidate.requests < s.min_requests or stable.requests < s.min_requests:
        return Check("latency", Verdict.INCONCLUSIVE,
                     f"{candidate.requests:.0f} candidate / {stable.requests:.0f} stable "
                     f"requests, need {s.min_requests} each")
    pc, ps = candidate.quantile(0.99), stable.quantile(0.99)
    if pc is None or ps is None:
        return Check("latency", Verdict.INCONCLUSIVE, "no latency histogram in the window")
    ratio = pc / max(ps, 1e-4)
    detail = (f"p99 candidate {pc * 1000:.1f} ms vs stable {ps * 1000:.1f} ms = {ratio:.2f}x "
              f"(limit {s.max_p99_ratio:g}x)")
    return Check("latency", Verdict.FAILED if ratio > s.max_p99_ratio else Verdict.SUCCESSFUL,
                 detail)


def wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def agreement_check(agreed: float, disagreed: float, s: AnalysisSettings) -> Check:
    n = agreed + disagreed
    if n < s.min_requests:
        return Check("agreement", Verdict.INCONCLUSIVE,
                     f"{n:.0f} rows compared, need {s.min_requests}")
    low, high = wilson(agreed, n, _z(s.confidence))
    detail = (f"{agreed:.0f}/{n:.0f} rows agree = {agreed / n:.1%}, interval [{low:.1%}, "
              f"{high:.1%}] vs floor {s.min_agreement:.0%}")
    if high < s.min_agreement:
        return Check("agreement", Verdict.FAILED, detail)
    if low >= s.min_agreement:
        return Check("agreement", Verdict.SUCCESSFUL, detail)
    return Check("agreement", Verdict.INCONCLUSIVE, detail)


def combine(checks: list[Check]) -> Verdict:
    verdicts = {c.verdict for c in checks}
    if Verdict.FAILED in verdicts:
        return Verdict.FAILED
    if verdicts == {Verdict.SUCCESSFUL}:
        return Verdict.SUCCESSFUL
    return Verdict.INCONCLUSIVE


def analyse(window: Window, stable: str, candidate: str, mirrored: bool,
            settings: AnalysisSettings) -> AnalysisResult:
    """The candidate's verdict over one window (mirrored: it runs as the shadow)."""
    cand, base = window.predictor(candidate), window.predictor(stable)
    checks = [error_check(cand, base, settings)]
    # A mirrored candidate's latency is not judged: shadows run at low priority and their calls
    # overlap the primary's, so their timing says more about the host than about the model.
    if not mirrored:
        checks.append(latency_check(cand, base, settings))
    if mirrored:
        agreed, disagreed = window.shadow_rows.get(candidate, (0.0, 0.0))
        checks.append(agreement_check(agreed, disagreed, settings))
    return AnalysisResult(combine(checks), checks, window.seconds)

"""The rollout plan, as data in the deployment spec (values `rollout:`).

Like Argo Rollouts' canary steps, each step has exactly one of:
  mirror: N      run the candidate as the shadow, mirroring N% of requests (answers compared)
  setWeight: N   run the candidate as the canary with N% of traffic
  pause: 30s     wait (a duration), or `pause: {}` to wait until `serving rollout resume`
  analysis: {}   wait until analysis gives a successful verdict
Analysis also runs in the background at every interval during every step: failed verdicts, up to
`failureLimit`, roll the candidate back whatever step it is on.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Values(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def parse_duration(text: str | float | int) -> float:
    """'90s', '2m', '500ms', or a number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration; use e.g. 30s, 2m, 500ms")
    return float(match.group(1)) * UNIT_SECONDS[match.group(2)]


class Pause(_Values):
    duration: float | None = None
    """Seconds to wait; None waits until `serving rollout resume`."""

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)


class Step(_Values):
    set_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    mirror: Annotated[int, Field(ge=1, le=100)] | None = None
    pause: Pause | None = None
    analysis: dict[str, Any] | None = None

    @field_validator("pause", mode="before")
    @classmethod
    def _pause(cls, value: Any) -> Any:
        if isinstance(value, str | int | float):
            return {"duration": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        chosen = [k for k in ("set_weight", "mirror", "pause", "analysis")
                  if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "each step needs exactly one of setWeight, mirror, pause, analysis; got "
                f"{[to_camel(k) for k in chosen] or 'none'}")
        return self

    @property
    def kind(self) -> str:
        for k in ("set_weight", "mirror", "pause", "analysis"):
            if getattr(self, k) is not None:
                return k
        raise AssertionError("validated step has a kind")

    def describe(self) -> str:
        if self.set_weight is not None:
            return f"setWeight {self.set_weight}"
        if self.mirror is not None:
            return f"mirror {self.mirror}%"
        if self.pause is not None:
            return "pause until resumed" if self.pause.duration is None else \
                f"pause {self.pause.duration:g}s"
        return "analysis"


class AnalysisSettings(_Values):
    interval_seconds: Annotated[float, Field(gt=0)] = 10.0
    """How often metrics are read and judged."""
    min_requests: Annotated[int, Field(ge=1)] = 200
    """Requests each side needs in the window; fewer gives an inconclusive verdict."""
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.02
    """Candidate error rate may exceed stable's by at most this (absolute, 0.02 = 2 points)."""
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    """One-sided confidence for the error-rate and agreement tests."""
    max_p99_ratio: Annotated[float, Field(gt=1)] = 1.5
    """Candidate p99 latency may be at most this multiple of stable's."""
    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.9
    """Share of rows on which a mirrored candidate must agree with the primary."""
    failure_limit: Annotated[int, Field(ge=1)] = 2
    """Failed verdicts that trigger an automatic rollback."""


class RolloutPlan(_Values):
    candidate_predictor: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = \
        "canary"
    """The predictor name the candidate runs under while it is a canary."""
    steps: list[Step] = Field(default_factory=lambda: [
        Step(mirror=100), Step(analysis={}), Step(set_weight=10), Step(analysis={}),
        Step(set_weight=50), Step(analysis={}),
    ])
    """The steps, in order; after the last one the candidate is promoted."""
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    """Thresholds and cadence of the automated analysis."""

    @model_validator(mode="after")
    def _mirror_first(self) -> RolloutPlan:
        seen_weight = False
        for i, step in enumerate(self.steps):
            if step.set_weight is not None:
                seen_weight = True
            elif step.mirror is not None and seen_weight:
                raise ValueError(f"steps[{i}]: mirror steps must come before the first setWeight "
                                 "(a candidate is mirrored first, then takes traffic)")
        return self

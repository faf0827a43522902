"""The rollout controller: a pure transition function plus a small loop that applies it.

`next_state(status, plan, analysis, now)` decides; it touches nothing. `desired_predictors`
says what the deployment should look like for a status. `Controller.tick()` reads metrics,
calls both, saves the new status *first* and then makes the backend match it. Applying a
desired state is idempotent, so a controller killed at any point and started again re-applies
the same state and resumes at the same step; it never runs a step's transition twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import ServingError
from ..spec import Predictor
from .analysis import AnalysisResult, Verdict, analyse
from .backends import TrafficBackend
from .metrics_source import MetricsSource
from .plan import RolloutPlan
from .state import Phase, RolloutStatus, StateStore

logger = logging.getLogger("serving.rollout")


def next_state(status: RolloutStatus, plan: RolloutPlan, analysis: AnalysisResult | None,
               now: float) -> RolloutStatus:
    """The status after one analysis interval. Pure: same inputs, same output."""
    s = status.model_copy(deep=True)
    if s.phase.terminal or s.phase is Phase.PAUSED:
        return s
    if analysis is not None:
        s.last_analysis = {"at": now, **analysis.as_dict()}
        if analysis.verdict is Verdict.FAILED:
            s.failed_checks += 1
            s.record("failed-check", f"analysis failed ({s.failed_checks}/"
                     f"{plan.analysis.failure_limit}): {analysis.summary()}", now,
                     analysis=analysis.as_dict())
            if s.failed_checks >= plan.analysis.failure_limit:
                s.phase = Phase.ROLLED_BACK
                s.canary_weight, s.mirror_percent = 0, 0
                s.record("rolled-back", f"rolled back {s.candidate}: {analysis.summary()}", now)
                return s
    # Walk instantaneous steps (weights, mirror) at once; stop at a pause or an analysis gate.
    while s.step_index < len(plan.steps):
        step = plan.steps[s.step_index]
        if step.set_weight is not None or step.mirror is not None:
            if step.set_weight is not None:
                s.canary_weight, s.mirror_percent = step.set_weight, 0
            else:
                s.mirror_percent = step.mirror or 0
            s.window_started_at = now  # a new traffic shape starts a new analysis window
            analysis = None  # ... and a verdict about the old shape says nothing about it
            _advance(s, now, f"step {s.step_index + 1}/{len(plan.steps)}: {step.describe()}")
            continue
        if step.pause is not None:
            if step.pause.duration is None:
                s.phase = Phase.PAUSED
                s.record("paused", f"step {s.step_index + 1}: paused until "
                         "'serving rollout resume'", now)
                return s
            if now - s.step_started_at < step.pause.duration:
                s.message = (f"step {s.step_index + 1}: pausing, "
                             f"{step.pause.duration - (now - s.step_started_at):.0f}s left")
                return s
            _advance(s, now, f"step {s.step_index + 1}: pause of {step.pause.duration:g}s done")
            continue
        # analysis gate
        if analysis is not None and analysis.verdict is Verdict.SUCCESSFUL:
            _advance(s, now, f"step {s.step_index + 1}: analysis successful: "
                     f"{analysis.summary()}")
            analysis = None  # one verdict opens one gate
            continue
        s.message = (f"step {s.step_index + 1}: waiting for a successful analysis"
                     + (f" ({analysis.verdict}: {analysis.summary()})" if analysis else ""))
        return s
    s.phase = Phase.PROMOTED
    s.canary_weight, s.mirror_percent = 0, 0
    s.record("promoted", f"promoted {s.candidate}: it is now the stable version", now)
    return s


def _advance(s: RolloutStatus, now: float, message: str) -> None:
    s.step_index += 1
    s.step_started_at = now
    s.record("step", message, now, stepIndex=s.step_index)


def resume(status: RolloutStatus, plan: RolloutPlan, now: float) -> RolloutStatus:
    s = status.model_copy(deep=True)
    if s.phase is not Phase.PAUSED:
        raise ServingError(f"the rollout is {s.phase}, not Paused; nothing to resume")
    s.phase = Phase.PROGRESSING
    step = plan.steps[s.step_index] if s.step_index < len(plan.steps) else None
    if step is not None and step.pause is not None and step.pause.duration is None:
        _advance(s, now, f"step {s.step_index + 1}: resumed")
    else:
        s.record("resumed", "resumed", now)
    return s


def desired_predictors(status: RolloutStatus, plan: RolloutPlan) -> list[Predictor]:
    """The predictors the deployment should run for this status of this plan."""
    stable = Predictor.model_validate(status.stable_spec)
    original_shadow = (Predictor.model_validate(status.original_shadow)
                       if status.original_shadow else None)
    if status.phase is Phase.PROMOTED:
        promoted = stable.model_copy(update={"version": status.candidate, "traffic": 100,
                                             "env": dict(status.candidate_env)})
        return [promoted] + ([original_shadow] if original_shadow else [])
    candidate = stable.model_copy(update={
        "name": status.candidate_predictor, "version": status.candidate,
        "env": dict(status.candidate_env)})
    if status.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
        return [stable.model_copy(update={"traffic": 100})] + (
            [original_shadow] if original_shadow else [])
    past_a_weight_step = any(step.set_weight is not None
                             for step in plan.steps[:status.step_index])
    if status.canary_weight > 0 or past_a_weight_step:
        return [stable.model_copy(update={"traffic": 100 - status.canary_weight}),
                candidate.model_copy(update={"traffic": status.canary_weight, "shadow": False})
                ] + ([original_shadow] if original_shadow else [])
    if status.mirror_percent > 0:
        # The candidate takes the shadow slot (one shadow at most); the old shadow waits.
        return [stable.model_copy(update={"traffic": 100}),
                candidate.model_copy(update={"traffic": status.mirror_percent, "shadow": True})]
    return [stable.model_copy(update={"traffic": 100})] + (
        [original_shadow] if original_shadow else [])


class Controller:
    def __init__(self, store: StateStore, backend: TrafficBackend, metrics: MetricsSource,
                 plan: RolloutPlan,
                 echo: Callable[[str], Any] = print, clock: Callable[[], float] = time.time):
        self.store = store
        self.backend = backend
        self.metrics = metrics
        self.plan = plan
        self.echo = echo
        self.clock = clock

    def observe(self, status: RolloutStatus) -> AnalysisResult | None:
        if status.phase is not Phase.PROGRESSING:
            return None
        if status.canary_weight == 0 and status.mirror_percent == 0:
            return None  # the candidate gets no traffic: nothing to judge
        try:
            window = self.metrics.window(status.window_started_at)
        except ServingError as e:
            self.echo(f"metrics unavailable: {e.message}")
            return AnalysisResult(Verdict.ERROR, [], 0.0)
        return analyse(window, status.stable_predictor, status.candidate_predictor,
                       mirrored=status.mirror_percent > 0 and status.canary_weight == 0,
                       settings=self.plan.analysis)

    def tick(self) -> RolloutStatus:
        status = self.store.load()
        if status is None:
            raise ServingError("no rollout in progress; start one with 'serving rollout start'")
        result = self.observe(status)
        if result is not None and result.verdict is Verdict.ERROR:
            result = None  # an unreadable interval is neither a pass nor a failure
        new = next_state(status, self.plan, result, self.clock())
        seen = len(status.history)
        if new != status:
            new = self.store.save(new)  # persist first: a crash now re-applies, never re-steps
        for event in new.history[seen:]:
            self.echo(f"[{time.strftime('%H:%M:%S', time.localtime(event.at))}] "
                      f"{event.kind}: {event.message}")
        self.backend.apply(desired_predictors(new, self.plan))
        return new

    def run(self, stop_when_paused: bool = False) -> RolloutStatus:
        """Tick every analysis interval until the rollout ends (or pauses, if asked)."""
        while True:
            status = self.tick()
            if status.phase.terminal or (stop_when_paused and status.phase is Phase.PAUSED):
                return status
            time.sleep(self.plan.analysis.interval_seconds)

"""The rollout controller's decisions, as pure functions: steps, gates, failure limit, promotion."""

from __future__ import annotations

import pytest

from serving.rollout.analysis import AnalysisResult, Check, Verdict
from serving.rollout.backends import plan_apply
from serving.rollout.controller import desired_predictors, next_state, resume
from serving.rollout.plan import RolloutPlan
from serving.rollout.state import Phase, RolloutStatus
from serving.spec import Predictor

STABLE = Predictor(name="stable", version="v1", traffic=100, replicas=2)
SHADOW = Predictor(name="shadow", version="v3", shadow=True, traffic=50)


def plan(*steps: dict[str, object], failure_limit: int = 2) -> RolloutPlan:
    return RolloutPlan.model_validate({"steps": list(steps),
                                       "analysis": {"failureLimit": failure_limit}})


def fresh(now: float = 0.0) -> RolloutStatus:
    return RolloutStatus(candidate="v2", stable_version="v1", stable_predictor="stable",
                         stable_spec=STABLE.model_dump(mode="json", by_alias=True),
                         candidate_predictor="canary",
                         original_shadow=SHADOW.model_dump(mode="json", by_alias=True),
                         step_started_at=now, window_started_at=now)


def verdict(v: Verdict) -> AnalysisResult:
    return AnalysisResult(v, [Check("errors", v, "evidence")], 10.0)


OK, BAD, UNSURE = (verdict(Verdict.SUCCESSFUL), verdict(Verdict.FAILED),
                   verdict(Verdict.INCONCLUSIVE))


def test_weight_steps_apply_at_once_and_stop_at_an_analysis_gate() -> None:
    p = plan({"setWeight": 10}, {"analysis": {}}, {"setWeight": 50})
    s = next_state(fresh(), p, None, now=1.0)
    assert (s.step_index, s.canary_weight, s.window_started_at) == (1, 10, 1.0)
    assert "waiting for a successful analysis" in s.message


def test_an_inconclusive_analysis_never_advances() -> None:
    p = plan({"setWeight": 10}, {"analysis": {}}, {"setWeight": 50})
    s = next_state(fresh(), p, None, 1.0)
    for t in range(2, 20):
        s = next_state(s, p, UNSURE, float(t))
    assert (s.phase, s.step_index, s.canary_weight, s.failed_checks) == (
        Phase.PROGRESSING, 1, 10, 0)


def test_a_successful_analysis_opens_the_gate_and_the_end_promotes() -> None:
    p = plan({"setWeight": 10}, {"analysis": {}}, {"setWeight": 50}, {"analysis": {}})
    s = next_state(fresh(), p, None, 1.0)
    s = next_state(s, p, OK, 2.0)
    assert (s.step_index, s.canary_weight) == (3, 50)
    s = next_state(s, p, OK, 3.0)
    assert s.phase is Phase.PROMOTED
    assert [e.kind for e in s.history][-1] == "promoted"


def test_failed_checks_up_to_the_limit_roll_back_from_any_step() -> None:
    p = plan({"setWeight": 20}, {"pause": "10m"}, failure_limit=3)
    s = next_state(fresh(), p, None, 1.0)
    for t in (2.0, 3.0):
        s = next_state(s, p, BAD, t)
        assert s.phase is Phase.PROGRESSING
    s = next_state(s, p, BAD, 4.0)
    assert s.phase is Phase.ROLLED_BACK
    assert (s.canary_weight, s.failed_checks) == (0, 3)
    assert "evidence" in s.message


def test_timed_pause_waits_its_duration() -> None:
    p = plan({"setWeight": 10}, {"pause": "30s"}, {"setWeight": 40})
    s = next_state(fresh(), p, None, 0.0)
    s = next_state(s, p, OK, 29.0)
    assert (s.step_index, s.canary_weight) == (1, 10)
    s = next_state(s, p, OK, 31.0)
    assert (s.step_index, s.canary_weight) == (3, 40) or s.phase is Phase.PROMOTED


def test_pause_without_duration_waits_for_resume() -> None:
    p = plan({"setWeight": 10}, {"pause": {}}, {"setWeight": 40}, {"analysis": {}})
    s = next_state(fresh(), p, None, 0.0)
    assert s.phase is Phase.PAUSED
    assert next_state(s, p, OK, 100.0) == s  # nothing moves while paused
    s = resume(s, p, 101.0)
    s = next_state(s, p, None, 102.0)
    assert (s.phase, s.canary_weight) == (Phase.PROGRESSING, 40)


def test_next_state_is_pure() -> None:
    p = plan({"setWeight": 10}, {"analysis": {}})
    before = fresh()
    snapshot = before.model_copy(deep=True)
    assert next_state(before, p, BAD, 5.0) == next_state(before, p, BAD, 5.0)
    assert before == snapshot


def test_mirror_step_runs_the_candidate_as_the_shadow_in_place_of_the_old_one() -> None:
    p = plan({"mirror": 100}, {"analysis": {}})
    s = next_state(fresh(), p, None, 1.0)
    predictors = desired_predictors(s, p)
    assert [(p.name, p.version, p.shadow, p.traffic) for p in predictors] == [
        ("stable", "v1", False, 100), ("canary", "v2", True, 100)]


def test_canary_steps_split_traffic_and_restore_the_old_shadow() -> None:
    p = plan({"mirror": 50}, {"setWeight": 30}, {"analysis": {}})
    s = next_state(fresh(), p, None, 1.0)
    predictors = desired_predictors(s, p)
    assert [(p.name, p.version, p.shadow, p.traffic) for p in predictors] == [
        ("stable", "v1", False, 70), ("canary", "v2", False, 30), ("shadow", "v3", True, 50)]
    assert predictors[1].replicas == STABLE.replicas


@pytest.mark.parametrize("phase", [Phase.ROLLED_BACK, Phase.ABORTED])
def test_rollback_and_abort_give_stable_all_traffic_and_remove_the_candidate(
    phase: Phase,
) -> None:
    s = fresh().model_copy(update={"phase": phase})
    assert [(p.name, p.version, p.traffic) for p in desired_predictors(s, plan())] == [
        ("stable", "v1", 100), ("shadow", "v3", 50)]


def test_promotion_makes_the_candidate_the_stable_predictor() -> None:
    s = fresh().model_copy(update={"phase": Phase.PROMOTED, "candidate_env": {"A": "1"}})
    stable = desired_predictors(s, plan())[0]
    assert (stable.name, stable.version, stable.traffic, stable.env) == (
        "stable", "v2", 100, {"A": "1"})


def test_removing_a_predictor_moves_its_traffic_away_first() -> None:
    current = [STABLE.model_copy(update={"traffic": 80}),
               Predictor(name="canary", version="v2", traffic=20)]
    first, replace = plan_apply(current, [STABLE])
    assert first == ({"stable": 100, "canary": 0}, None) and replace


def test_weight_only_changes_do_not_replace_predictors() -> None:
    current = [STABLE.model_copy(update={"traffic": 80}),
               Predictor(name="canary", version="v2", traffic=20)]
    desired = [STABLE.model_copy(update={"traffic": 50}),
               Predictor(name="canary", version="v2", traffic=50)]
    assert plan_apply(current, desired) == (({"stable": 50, "canary": 50}, None), False)
    assert plan_apply(desired, desired) == (None, False)


def test_plan_validation_names_the_step() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one of"):
        plan({"setWeight": 10, "mirror": 20})
    with pytest.raises(ValidationError, match="mirror steps must come before"):
        plan({"setWeight": 10}, {"mirror": 20})

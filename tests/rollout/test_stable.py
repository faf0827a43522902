"""One definition of the stable predictor (serving.spec.stable_predictor): the router falls back
to the predictor a rollout starts from and returns to."""

from __future__ import annotations

from typing import Any

import pytest

from serving.errors import SpecError
from serving.rollout.commands import Target, begin
from serving.rollout.plan import RolloutPlan
from serving.rollout.state import RolloutStatus
from serving.router.core import RouterCore
from serving.router.replicas import PredictorPool
from serving.spec import Predictor, parse_spec, stable_predictor

# No predictor is named 'stable': the one with the most traffic is, whatever its position.
CANARY_FIRST = [
    {"name": "canary", "version": "v2", "traffic": 10},
    {"name": "main", "version": "v1", "traffic": 90},
    {"name": "shadow", "version": "v3", "shadow": True, "traffic": 100},
]


def predictors(values: list[dict[str, Any]]) -> list[Predictor]:
    return parse_spec({"predictors": values}).predictors


class MemoryStore:
    def __init__(self) -> None:
        self.status: RolloutStatus | None = None

    def load(self) -> RolloutStatus | None:
        return self.status

    def save(self, status: RolloutStatus) -> RolloutStatus:
        self.status = status.model_copy(update={"revision": status.revision + 1})
        return self.status


class FixedBackend:
    def __init__(self, running: list[Predictor]) -> None:
        self.running = running

    def get_predictors(self) -> list[Predictor]:
        return list(self.running)

    def set_routes(self, weights: dict[str, int], mirror_percent: int | None) -> None:
        raise AssertionError("begin only records the rollout")

    def apply(self, predictors: list[Predictor]) -> None:
        raise AssertionError("begin only records the rollout")


def test_the_router_falls_back_to_the_predictor_with_the_most_traffic() -> None:
    spec = parse_spec({"predictors": CANARY_FIRST})
    core = RouterCore(spec, {p.name: PredictorPool(p, []) for p in spec.predictors})
    assert core.table()["stable"] == "main"


def test_a_rollout_starts_from_the_same_stable_predictor() -> None:
    target = Target(MemoryStore(), FixedBackend(predictors(CANARY_FIRST)), metrics=None,  # type: ignore[arg-type]
                    plan=RolloutPlan.model_validate({"steps": [{"setWeight": 20}]}))
    status = begin(target, "v4")
    assert (status.stable_predictor, status.stable_version) == ("main", "v1")


@pytest.mark.parametrize(
    ("values", "stable"),
    [
        (CANARY_FIRST, "main"),
        ([{"name": "canary", "version": "v2", "traffic": 60},
          {"name": "stable", "version": "v1", "traffic": 40}], "stable"),  # the name wins
        ([{"name": "a", "version": "v1", "traffic": 50},
          {"name": "b", "version": "v2", "traffic": 50}], "a"),  # the first of equals
        ([{"name": "only", "version": "v1"},
          {"name": "stable", "version": "v3", "shadow": True, "traffic": 100}], "only"),
    ],
    ids=["most-traffic", "named-stable", "tie", "a-shadow-named-stable-is-not-stable"],
)
def test_stable_predictor(values: list[dict[str, Any]], stable: str) -> None:
    assert stable_predictor(predictors(values)).name == stable


def test_no_stable_predictor_among_shadows_only() -> None:
    with pytest.raises(SpecError, match="every predictor is a shadow"):
        stable_predictor([Predictor(name="s", version="v3", shadow=True)])

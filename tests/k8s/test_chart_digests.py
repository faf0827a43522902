"""On a cluster the chart carries each version's expected sha256 (model.artifacts) to the runtime:
an env var on the container of every custom predictor, for its own version only."""

from __future__ import annotations

import pytest

from serving.artifacts import DIGESTS_ENV, compiled_key, parse_digests
from serving.k8s.errors import ChartError
from serving.spec import load_spec

from .conftest import VALUES
from .test_chart import containers, predictor, sdep_of

SPEC = load_spec(VALUES)


def digests_of(sdep: dict, name: str) -> dict[str, str]:  # type: ignore[type-arg]
    [container] = containers(predictor(sdep, name))
    env = {e["name"]: e["value"] for e in container["env"]}
    return parse_digests(env[DIGESTS_ENV])


def test_every_custom_predictor_gets_the_digest_of_its_own_version_from_model_artifacts() -> None:
    sdep = sdep_of()
    for p in SPEC.predictors:
        assert digests_of(sdep, p.name) == {  # model.joblib's, and model.onnx's when compiled
            key: SPEC.model.artifacts[key] for key in (p.version, compiled_key(p.version))
            if key in SPEC.model.artifacts}
        assert compiled_key(p.version) in digests_of(sdep, p.name)  # v1-v3 are compiled


def test_a_rollout_to_another_version_renders_that_versions_digest() -> None:
    sdep = sdep_of({"predictors": [{"name": "stable", "version": "v1", "traffic": 50},
                                   {"name": "canary", "version": "v4", "traffic": 50}]})
    assert digests_of(sdep, "canary") == {"v4": SPEC.model.artifacts["v4"]}


def test_a_predictor_env_cannot_set_the_digests() -> None:
    with pytest.raises(ChartError) as err:
        sdep_of({"predictors": [
            {"name": "stable", "version": "v1", "env": {DIGESTS_ENV: f"v1={'0' * 64}"}}]})
    assert f"predictors[0].env.{DIGESTS_ENV}: the chart sets it from model.artifacts" in str(
        err.value)


def test_a_version_without_a_recorded_digest_is_refused_naming_the_key_and_the_fix() -> None:
    with pytest.raises(ChartError) as err:
        sdep_of({"predictors": [{"name": "stable", "version": "v9"}]})
    assert "model.artifacts.v9: no sha256 recorded for version v9 (predictors[0] stable)" in str(
        err.value)
    assert "serving train --record-digests" in str(err.value)

"""Bad values are refused by the chart (values.schema.json or validateValues) exactly where
serving/spec.py refuses them, each with a message that names the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from serving.errors import SpecError
from serving.k8s import chart, schema
from serving.k8s.errors import ChartError
from serving.spec import parse_spec

from .conftest import VALUES

DEFAULTS = yaml.safe_load(VALUES.read_text())


def with_predictors(*predictors: dict[str, Any]) -> dict[str, Any]:
    values = copy.deepcopy(DEFAULTS)
    values["predictors"] = list(predictors)
    return values


def stable(**kw: Any) -> dict[str, Any]:
    return {"name": "stable", "version": "v1", **kw}


BAD = {
    # name: (values, the line both the chart and the spec print)
    "weights-not-summing-to-100": (
        with_predictors(stable(traffic=80), {"name": "canary", "version": "v2", "traffic": 30}),
        "predictors[].traffic: non-shadow traffic must sum to 100 when there are several "
        "predictors, got stable 80 + canary 30 = 110; adjust the weights",
    ),
    "two-shadows": (
        with_predictors(
            stable(traffic=100),
            {"name": "s1", "version": "v2", "shadow": True},
            {"name": "s2", "version": "v3", "shadow": True},
        ),
        "predictors[].shadow: at most one shadow predictor, got ['s1', 's2']; set shadow: false on all but one",
    ),
    "shadow-alone": (
        with_predictors({"name": "s1", "version": "v2", "shadow": True}),
        "predictors[].shadow: a shadow cannot be the only predictor; add a non-shadow predictor",
    ),
    "duplicate-names": (
        with_predictors(stable(traffic=50), stable(traffic=50)),
        "predictors[1].name: duplicate predictor name 'stable'; names must be unique",
    ),
    "sklearn-server-without-model-uri": (
        with_predictors(stable(server="SKLEARN_SERVER")),
        "predictors[0].modelUri: required when server is SKLEARN_SERVER; set it to the artifact "
        "folder (e.g. gs://bucket/breast-cancer/v1)",
    ),
}


def chart_refusal(values: dict[str, Any]) -> str:
    with pytest.raises(ChartError) as e:
        chart.render(values)
    return e.value.message


def spec_refusal(values: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as e:
        parse_spec(values)
    return e.value.message


@pytest.mark.parametrize("case", list(BAD))
def test_the_chart_refuses_what_the_seldon_operator_would_with_the_specs_own_words(
    case: str,
) -> None:
    values, line = BAD[case]
    assert line in chart_refusal(values)  # validateValues
    assert line in spec_refusal(values)  # serving/spec.py


@pytest.mark.parametrize(
    ("values", "key", "schema_says"),
    [
        (
            with_predictors(stable(traffic=120)),
            "/predictors/0/traffic",
            "maximum: got 120, want 100",
        ),
        (with_predictors(stable(trafic=100)), "/predictors/0", "'trafic' not allowed"),
        ({**DEFAULTS, "replicas": 2}, "at ''", "'replicas' not allowed"),
        (
            {**DEFAULTS, "networkPolicy": {"enabled": True, "ingresNamespace": "x"}},
            "/networkPolicy",
            "'ingresNamespace'",
        ),
        (
            with_predictors(stable(hpa={"enabled": True, "maxReplica": 4})),
            "/predictors/0/hpa",
            "'maxReplica'",
        ),
        (
            with_predictors(stable(server="TRITON")),
            "/predictors/0/server",
            "must be one of 'custom', 'SKLEARN_SERVER'",
        ),
    ],
    ids=[
        "traffic-120",
        "unknown-predictor-key",
        "unknown-top-key",
        "unknown-section-key",
        "unknown-nested-key",
        "bad-enum",
    ],
)
def test_values_schema_refuses_out_of_range_and_unknown_keys_naming_the_key(
    values: dict[str, Any], key: str, schema_says: str
) -> None:
    message = chart_refusal(values)
    assert key in message and schema_says in message
    spec_refusal(values)  # the spec refuses the same values


def test_a_custom_predictor_needs_its_model_on_a_pvc() -> None:
    values = with_predictors(stable(modelUri="s3://bucket/breast-cancer/v1"))
    message = chart_refusal(values)
    assert "predictors[0].modelUri" in message and "pvc://<claim>/<path>" in message
    assert "SKLEARN_SERVER" in message


def test_the_release_namespace_must_be_the_deployment_namespace() -> None:
    with helm.Chart.load(chart.CHART_DIR) as c, pytest.raises(helm.HelmRenderError) as e:
        c.render(values=None, name="breast-cancer", namespace="default")
    assert "deployment.namespace" in e.value.detail and "--namespace models" in e.value.detail


def test_the_schema_file_is_generated_from_the_spec() -> None:
    on_disk = json.loads((chart.CHART_DIR / "values.schema.json").read_text())
    assert on_disk == schema.values_schema(), "values.schema.json is stale: run 'make manifests'"
    assert on_disk["additionalProperties"] is False


SAMPLES = [
    DEFAULTS,
    with_predictors(stable()),
    with_predictors(stable(traffic=-1)),
    with_predictors(stable(replicas=-1)),
    with_predictors(stable(name="Not_A_Label")),
    with_predictors(stable(hpa={"cpuTargetUtilization": 0})),
    {**DEFAULTS, "image": {"repository": "r", "tag": "t", "pullPolicy": "Sometimes"}},
    {**DEFAULTS, "monitoring": {"podMonitor": {"interval": "15 seconds"}}},
    {**DEFAULTS, "podSecurity": {"runAsUser": 0}},
    {**DEFAULTS, "router": {"port": 70000}},
    {**DEFAULTS, "deployment": {"name": "x" * 64}},
]


@pytest.mark.parametrize("values", SAMPLES, ids=lambda v: json.dumps(v)[-60:])
def test_the_schema_and_the_spec_agree_on_field_level_rules(values: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema.values_schema())
    schema_ok = validator.is_valid(values)
    try:
        parse_spec(values)
        spec_ok = True
    except SpecError:
        spec_ok = False
    assert schema_ok == spec_ok


def test_the_chart_renders_a_values_file_written_for_the_local_stack(tmp_path: Path) -> None:
    values = with_predictors(
        stable(traffic=100), {"name": "shadow", "version": "v3", "shadow": True, "traffic": 25}
    )
    rendered = chart.render(values)
    sdep = next(o for o in rendered.objects if o["kind"] == "SeldonDeployment")
    assert [(p["name"], p["traffic"]) for p in sdep["spec"]["predictors"]] == [
        ("stable", 100),
        ("shadow", 25),
    ]

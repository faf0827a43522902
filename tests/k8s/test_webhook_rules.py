"""Every rule of the Seldon operator's admission webhook (ValidateSeldonDeployment, v1.18.2):
a rendered SeldonDeployment that breaks exactly that rule is refused with the webhook's own words,
the field to change and the fix, and nothing else is reported."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.k8s import manifests, validate, webhook_rules

SDEP = next(
    d
    for d in yaml.safe_load_all((manifests.MANIFESTS_DIR / manifests.MANIFEST_FILE).read_text())
    if d and d["kind"] == "SeldonDeployment"
)
# predictors: [0] stable (traffic 90), [1] canary (10), [2] shadow (mirrors 100); one container
# per predictor, named like the graph node (breast-cancer)


def edited(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    obj = copy.deepcopy(SDEP)
    change(obj["spec"])
    return obj


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets spec.<path> (dotted, with [i] for list items) to value."""

    def change(spec: dict[str, Any]) -> None:
        node: Any = spec
        parts = path.replace("[", ".").replace("]", "").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _kafka(spec: dict[str, Any]) -> None:
    spec["serverType"] = "kafka"
    full = [{"name": n, "value": "x"} for n in webhook_rules.KAFKA_ENVS]
    for p in spec["predictors"]:
        p["svcOrchSpec"] = {"env": copy.deepcopy(full)}
    spec["predictors"][1]["svcOrchSpec"]["env"] = [{"name": "KAFKA_BROKER", "value": "b:9092"}]


def _same_service(spec: dict[str, Any]) -> None:
    spec["predictors"][1]["annotations"]["seldon.io/svc-name"] = "breast-cancer-stable"


def _no_engine(spec: dict[str, Any]) -> None:
    p = spec["predictors"][0]
    p["annotations"]["seldon.io/no-engine"] = "true"
    p["graph"]["children"] = [{"name": "breast-cancer", "type": "MODEL", "children": []}]


def _sklearn(uri: str = "", protocol: str | None = None) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        spec["predictors"][0]["graph"]["implementation"] = "SKLEARN_SERVER"
        if uri:
            spec["predictors"][0]["graph"]["modelUri"] = uri
        if protocol:
            spec["protocol"] = protocol

    return change


def _unknown_server(spec: dict[str, Any]) -> None:
    g = spec["predictors"][0]["graph"]
    g["implementation"], g["modelUri"] = "PYTORCH_SERVER", "gs://bucket/model"
    del spec["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["image"]


def _endpoint_types(spec: dict[str, Any]) -> None:
    spec["predictors"][0]["graph"]["endpoint"]["type"] = "REST"
    spec["predictors"][1]["graph"]["endpoint"]["type"] = "GRPC"


def _mixed(spec: dict[str, Any]) -> None:
    spec["transport"] = "grpc"
    spec["predictors"][0]["graph"]["endpoint"]["type"] = "REST"


def _lone(*, shadow: bool, traffic: int) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        p = spec["predictors"][2 if shadow else 0]
        spec["predictors"] = [{**p, "traffic": traffic}]

    return change


# rule -> (change, field to change, the webhook's own error, a word of the fix)
CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str, str, str]] = {
    "protocol": (_set("protocol", "v9"), "spec.protocol",
                 'spec: Invalid value: "v9": Invalid protocol', "v2"),
    "transport": (_set("transport", "http"), "spec.transport",
                  'spec: Invalid value: "http": Invalid transport', "rest, grpc"),
    "serverType": (_set("serverType", "grpc"), "spec.serverType",
                   'spec: Invalid value: "grpc": Invalid serverType', "rpc, kafka"),
    "kafka envs": (_kafka, "spec.predictors[1].svcOrchSpec.env",
                   'spec.predictors[1]: Invalid value: "canary": For kafka please supply '
                   "svcOrchSpec envs KAFKA_BROKER, KAFKA_INPUT_TOPIC, KAFKA_OUTPUT_TOPIC",
                   "add env entries KAFKA_INPUT_TOPIC, KAFKA_OUTPUT_TOPIC"),
    "lone shadow": (_lone(shadow=True, traffic=100), "spec.predictors[0].shadow",
                    'spec.predictors[0]: Invalid value: "shadow": Shadow can not exist as only '
                    "predictor", "add the non-shadow predictor"),
    "duplicate service names": (
        _same_service,
        "spec.predictors[1].annotations.seldon.io/svc-name",
        'spec.predictors[1]: Invalid value: "canary": Found duplicate service name in '
        "seldon.io/svc-name with value breast-cancer-stable",
        "its own service name"),
    "no predictors": (_set("predictors", []), "spec.predictors",
                      'spec: Invalid value: "": Graph contains no predictors', "add"),
    "no-engine graphs": (_no_engine, "spec.predictors[0].annotations.seldon.io/no-engine",
                         'spec.predictors[0]: Invalid value: "stable": Running without engine '
                         "only valid for single element graphs", "single node (it has 2)"),
    "duplicate predictor names": (_set("predictors[1].name", "stable"), "spec.predictors[1].name",
                                  'spec.predictors[1]: Invalid value: "stable": Duplicate '
                                  "predictor name", "names must be unique"),
    "node containers": (_set("predictors[0].graph.name", "classifier"),
                        "spec.predictors[0].graph.name",
                        'spec.predictors[0].graph: Invalid value: "classifier": Can\'t find '
                        "container for Predictive Unit", "name a container"),
    "node types": (_set("predictors[0].graph.type", "UNKNOWN_TYPE"),
                   "spec.predictors[0].graph.type",
                   'spec.predictors[0].graph: Invalid value: "breast-cancer": Predictive Unit '
                   "has no implementation methods defined. Change to a known type or add what "
                   "methods it defines", "set type to MODEL"),
    "prepackaged modelUri": (_sklearn(), "spec.predictors[0].graph.modelUri",
                             'spec.predictors[0].graph: Invalid value: "breast-cancer": '
                             "Predictive unit modelUri required when using standalone servers",
                             "set modelUri"),
    "prepackaged protocol": (_sklearn("gs://b/m", protocol="tensorflow"), "spec.protocol",
                             'spec.predictors[0].graph: Invalid value: "breast-cancer": '
                             "Prepackaged server does not handle tensorflow protocol "
                             "SKLEARN_SERVER", "use protocol v2"),
    "prepackaged server known": (_unknown_server, "spec.predictors[0].graph.implementation",
                                 'spec.predictors[0].graph: Invalid value: "breast-cancer": No '
                                 "entry in predictors map for PYTORCH_SERVER", "SKLEARN_SERVER"),
    "logger mode": (_set("predictors[0].graph.logger", {"url": "http://logger"}),
                    "spec.predictors[0].graph.logger.mode",
                    'spec.predictors[0].graph: Invalid value: "": No logger mode specified',
                    "all, request or response"),
    "one endpoint type": (_endpoint_types, "spec.predictors[].graph.endpoint.type",
                          'spec: Invalid value: "": Multiple endpoint.types found - can only '
                          "have 1 type in graph. Please use spec.transport",
                          "spec.predictors[1].graph.endpoint.type = GRPC"),
    "endpoint type matches transport": (
        _mixed, "spec.predictors[0].graph.endpoint.type",
        'spec: Invalid value: "": Mixed transport types found. Remove graph endpoint.types if '
        "transport set at deployment level", "it is REST but spec.transport is grpc"),
    "one shadow": (_set("predictors[1].shadow", True), "spec.predictors[2].shadow",
                   'spec: Invalid value: "shadow": Multiple shadows are not allowed',
                   "predictors[1] is already the shadow"),
    "shadow traffic": (_set("predictors[2].traffic", 150), "spec.predictors[2].traffic",
                       'spec: Invalid value: "shadow": shadow traffic is illegal, the traffic '
                       "number should be between [0, 100]", "it is 150"),
    "traffic sums to 100": (_set("predictors[1].traffic", 20), "spec.predictors[].traffic",
                            'spec: Invalid value: "stable": Traffic must sum to 100 for multiple '
                            "predictors", "stable 90 + canary 20 = 110"),
    "lone predictor traffic": (_lone(shadow=False, traffic=50), "spec.predictors[0].traffic",
                               'spec: Invalid value: "stable": Traffic must sum be 100 for a '
                               "single predictor when set", "set it to 100"),
}


def test_every_rule_of_the_webhook_has_a_case() -> None:
    assert set(CASES) == set(webhook_rules.RULES)


def test_the_rendered_chart_breaks_no_rule() -> None:
    assert webhook_rules.violations(SDEP) == []


@pytest.mark.parametrize("rule", list(CASES))
def test_a_manifest_breaking_one_rule_is_refused_in_the_webhooks_words(
    rule: str, needs_crd: Path
) -> None:
    change, field, webhook, fix = CASES[rule]
    obj = edited(change)
    found = webhook_rules.RULES[rule](webhook_rules.Sdep(obj))
    assert [(v.field, v.webhook) for v in found] == [(field, webhook)]
    assert fix in found[0].fix
    # through every engine: the CRD schema accepts the edit, and this rule is all that is wrong
    problems = validate.object_problems(obj)
    assert problems == [
        f"SeldonDeployment/breast-cancer: {field}: the Seldon operator webhook refuses it "
        f"({webhook}); {found[0].fix}"
    ]


def test_a_childs_path_is_the_manifests_and_the_webhooks_is_quoted() -> None:
    def change(spec: dict[str, Any]) -> None:
        spec["predictors"][0]["graph"]["children"] = [
            {"name": "breast-cancer", "children": [{"name": "explainer", "type": "MODEL"}]}]

    (v,) = webhook_rules.violations(edited(change))
    assert v.field == "spec.predictors[0].graph.children[0].children[0].name"
    assert v.webhook.startswith('spec.predictors[0].graph[0][0]: Invalid value: "explainer"')


def test_the_webhooks_own_leniencies_are_kept() -> None:
    """What the webhook lets through, so do we: no false refusals."""

    def lenient(spec: dict[str, Any]) -> None:
        spec["protocol"] = ""  # empty = the default
        spec["predictors"][0]["annotations"]["seldon.io/no-engine"] = "true"  # one node: fine
        spec["predictors"][1]["graph"]["implementation"] = "SIMPLE_MODEL"  # built in
        spec["predictors"][1]["graph"]["name"] = "no-container-needed"
        spec["predictors"][2]["graph"]["implementation"] = "HUGGINGFACE_SERVER"  # loads from Hub
        spec["predictors"][2]["graph"]["logger"] = {"mode": "all"}

    assert webhook_rules.violations(edited(lenient)) == []
    # a single primary next to a shadow is not "a single predictor": any traffic passes
    assert webhook_rules.violations(edited(_set("predictors", [
        {**SDEP["spec"]["predictors"][0], "traffic": 40}, SDEP["spec"]["predictors"][2]]))) == []
    # kafka: the webhook counts matching entries, so three KAFKA_BROKER entries pass
    def kafka(spec: dict[str, Any]) -> None:
        spec["serverType"] = "kafka"
        for p in spec["predictors"]:
            p["svcOrchSpec"] = {"env": [{"name": "KAFKA_BROKER", "value": "b"}] * 3}

    assert webhook_rules.violations(edited(kafka)) == []


def test_a_primary_with_traffic_outside_0_100_is_refused_even_when_the_sum_is_100(
    needs_crd: Path,
) -> None:
    def change(spec: dict[str, Any]) -> None:
        spec["predictors"][0]["traffic"], spec["predictors"][1]["traffic"] = 150, -50

    obj = edited(change)
    assert webhook_rules.violations(obj) == []  # the webhook itself only checks the sum
    problems = validate.object_problems(obj)
    assert problems == [
        "SeldonDeployment/breast-cancer: spec.predictors[0].traffic: 150 is outside 0..100; "
        "a predictor's traffic is a percentage of requests",
        "SeldonDeployment/breast-cancer: spec.predictors[1].traffic: -50 is outside 0..100; "
        "a predictor's traffic is a percentage of requests",
    ]


def test_wrongly_typed_fields_are_left_to_the_crd_schema(needs_crd: Path) -> None:
    def change(spec: dict[str, Any]) -> None:
        spec["predictors"][1]["traffic"] = "ten"
        spec["predictors"][0]["graph"]["children"] = "none"

    problems = validate.object_problems(edited(change))
    assert any("spec.predictors[1].traffic: 'ten' is not of type 'integer'" in p
               for p in problems), problems
    assert any("Traffic must sum to 100" in p for p in problems)  # "ten" decodes as no traffic

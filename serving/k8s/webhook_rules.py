"""The Seldon Core v1 operator's admission webhook, rule by rule, on a rendered SeldonDeployment.

Seldon Core v1.18.2 refuses a SeldonDeployment in `ValidateSeldonDeployment`
(operator/apis/machinelearning.seldon.io/v1/seldondeployment_webhook.go) and what it calls
(checkPredictiveUnits, checkTraffic, validateKafka, validateShadow, validateSvcNameAnnotations).
It runs on the object as submitted: no mutating webhook defaults it first (the controller
defaults later), so these rules read the manifest as it is. Each rule below is one function; RULES
lists them in the webhook's order. Written from the webhook's behaviour, not copied from it.

Every violation carries three things: the field to change (as a path into the manifest), the
error the API server would return, in the webhook's own words (`<path>: Invalid value: <value>:
<detail>`, where the webhook's path is its own: `spec` for most rules, `graph[0]` for children),
and the fix.

The one rule that reads the cluster (a prepackaged server without an image must be listed in the
operator's `seldon-config` ConfigMap, key `predictor_servers`) is checked against the servers the
seldon-core-operator 1.18.2 chart lists by default (PREPACKAGED_SERVERS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("seldon", "tensorflow", "kfserving", "v2")
TRANSPORTS = ("rest", "grpc")
SERVER_TYPES = ("rpc", "kafka")
KAFKA_ENVS = ("KAFKA_BROKER", "KAFKA_INPUT_TOPIC", "KAFKA_OUTPUT_TOPIC")
ENDPOINT_TRANSPORTS = {"REST": "rest", "GRPC": "grpc"}
"""graph endpoint.type -> the spec.transport it agrees with."""
SVC_NAME_ANNOTATION = "seldon.io/svc-name"
NO_ENGINE_ANNOTATION = "seldon.io/no-engine"
UNKNOWN_IMPLEMENTATION = "UNKNOWN_IMPLEMENTATION"
UNKNOWN_TYPE = "UNKNOWN_TYPE"
BUILT_IN_IMPLEMENTATIONS = ("SIMPLE_MODEL", "SIMPLE_ROUTER", "RANDOM_ABTEST", "AVERAGE_COMBINER")
"""Implementations the executor runs itself: neither a container nor a prepackaged server."""
HUGGINGFACE_SERVER = "HUGGINGFACE_SERVER"
NO_TENSORFLOW_PROTOCOL = ("SKLEARN_SERVER", "XGBOOST_SERVER", "MLFLOW_SERVER", HUGGINGFACE_SERVER)
PREPACKAGED_SERVERS = (
    "MLFLOW_SERVER",
    "SKLEARN_SERVER",
    "TENSORFLOW_SERVER",
    "XGBOOST_SERVER",
    "TRITON_SERVER",
    "HUGGINGFACE_SERVER",
    "TEMPO_SERVER",
)
"""predictor_servers in the seldon-core-operator 1.18.2 chart's default seldon-config."""


@dataclass(frozen=True)
class Violation:
    field: str
    """The field to change, as a path into the manifest (spec.predictors[1].traffic)."""
    webhook: str
    """The webhook's error as the API server returns it: `<path>: Invalid value: <v>: <detail>`."""
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: the Seldon operator webhook refuses it ({self.webhook}); {self.fix}"


def invalid(path: str, value: Any, detail: str) -> str:
    """The webhook's field.Invalid error, as Kubernetes prints it."""
    return f"{path}: Invalid value: {json.dumps(value)}: {detail}"


@dataclass(frozen=True)
class Unit:
    """One node of a predictor's graph, with both its manifest path and the webhook's."""

    node: dict[str, Any]
    field: str  # spec.predictors[0].graph.children[1]
    webhook_path: str  # spec.predictors[0].graph[1] (the webhook indexes children on the parent)

    @property
    def name(self) -> str:
        return _str(self.node.get("name"))

    @property
    def implementation(self) -> str | None:
        value = self.node.get("implementation")
        return None if value is None else _str(value)

    @property
    def prepackaged(self) -> bool:
        impl = self.implementation
        return bool(impl) and impl not in (*BUILT_IN_IMPLEMENTATIONS, UNKNOWN_IMPLEMENTATION)

    @property
    def needs_container(self) -> bool:
        return self.implementation in (None, UNKNOWN_IMPLEMENTATION)


class Sdep:
    """A SeldonDeployment manifest read the way the operator's Go types decode it: a missing field
    is its zero value. Wrongly typed fields are the CRD schema's to report; here they read as zero."""

    def __init__(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        self.spec: dict[str, Any] = spec if isinstance(spec, dict) else {}
        predictors = self.spec.get("predictors")
        self.predictors: list[dict[str, Any]] = [
            p if isinstance(p, dict) else {}
            for p in (predictors if isinstance(predictors, list) else [])
        ]

    def text(self, key: str) -> str:
        return _str(self.spec.get(key))

    @staticmethod
    def name(p: dict[str, Any]) -> str:
        return _str(p.get("name"))

    @staticmethod
    def traffic(p: dict[str, Any]) -> int:
        value = p.get("traffic")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @staticmethod
    def shadow(p: dict[str, Any]) -> bool:
        return p.get("shadow") is True

    @staticmethod
    def annotations(p: dict[str, Any]) -> dict[str, Any]:
        value = p.get("annotations")
        return value if isinstance(value, dict) else {}

    @staticmethod
    def graph(p: dict[str, Any]) -> dict[str, Any]:
        value = p.get("graph")
        return value if isinstance(value, dict) else {}

    def units(self, i: int) -> Iterator[Unit]:
        """Predictor i's graph nodes, depth first from the root."""
        root = f"spec.predictors[{i}].graph"

        def walk(node: dict[str, Any], field: str, webhook_path: str) -> Iterator[Unit]:
            yield Unit(node, field, webhook_path)
            for j, child in enumerate(_children(node)):
                yield from walk(child, f"{field}.children[{j}]", f"{webhook_path}[{j}]")

        yield from walk(self.graph(self.predictors[i]), root, root)

    def container(self, p: dict[str, Any], name: str) -> dict[str, Any] | None:
        """The container named after a graph node, in any of the predictor's componentSpecs."""
        specs = p.get("componentSpecs")
        for spec in specs if isinstance(specs, list) else []:
            pod = spec.get("spec") if isinstance(spec, dict) else None
            containers = pod.get("containers") if isinstance(pod, dict) else None
            for c in containers if isinstance(containers, list) else []:
                if isinstance(c, dict) and c.get("name") == name:
                    return c
        return None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _children(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children")
    return [c for c in children if isinstance(c, dict)] if isinstance(children, list) else []


def _graph_size(node: dict[str, Any]) -> int:
    return 1 + sum(_graph_size(c) for c in _children(node))


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values)


# -- the spec's enumerations ---------------------------------------------------------------------


def protocol(d: Sdep) -> list[Violation]:
    value = d.text("protocol")
    if not value or value in PROTOCOLS:
        return []
    return [Violation("spec.protocol", invalid("spec", value, "Invalid protocol"),
                      f"set it to one of {_one_of(PROTOCOLS)} (MLServer speaks v2), or leave it "
                      "out (seldon)")]


def transport(d: Sdep) -> list[Violation]:
    value = d.text("transport")
    if not value or value in TRANSPORTS:
        return []
    return [Violation("spec.transport", invalid("spec", value, "Invalid transport"),
                      f"set it to one of {_one_of(TRANSPORTS)} (lower case), or leave it out")]


def server_type(d: Sdep) -> list[Violation]:
    value = d.text("serverType")
    if not value or value in SERVER_TYPES:
        return []
    return [Violation("spec.serverType", invalid("spec", value, "Invalid serverType"),
                      f"set it to one of {_one_of(SERVER_TYPES)}, or leave it out (rpc)")]


def kafka_envs(d: Sdep) -> list[Violation]:
    """serverType kafka: every predictor's svcOrchSpec.env names the broker and both topics."""
    if d.text("serverType") != "kafka":
        return []
    out = []
    for i, p in enumerate(d.predictors):
        orch = p.get("svcOrchSpec")
        env = orch.get("env") if isinstance(orch, dict) else None
        names = [e.get("name") for e in (env if isinstance(env, list) else [])
                 if isinstance(e, dict)]
        if sum(n in KAFKA_ENVS for n in names) < 3:  # the webhook counts entries, not names
            missing = [n for n in KAFKA_ENVS if n not in names] or list(KAFKA_ENVS)
            out.append(Violation(
                f"spec.predictors[{i}].svcOrchSpec.env",
                invalid(f"spec.predictors[{i}]", d.name(p), "For kafka please supply svcOrchSpec "
                        "envs KAFKA_BROKER, KAFKA_INPUT_TOPIC, KAFKA_OUTPUT_TOPIC"),
                f"add env entries {', '.join(missing)} (each once), or drop serverType: kafka"))
    return out


# -- predictors ----------------------------------------------------------------------------------


def lone_shadow(d: Sdep) -> list[Violation]:
    if len(d.predictors) != 1 or not d.shadow(d.predictors[0]):
        return []
    return [Violation("spec.predictors[0].shadow",
                      invalid("spec.predictors[0]", d.name(d.predictors[0]),
                              "Shadow can not exist as only predictor"),
                      "add the non-shadow predictor it mirrors, or set shadow: false")]


def service_names(d: Sdep) -> list[Violation]:
    """The seldon.io/svc-name annotation names a Service: two predictors cannot share one."""
    seen: dict[str, int] = {}
    out = []
    for i, p in enumerate(d.predictors):
        if SVC_NAME_ANNOTATION not in d.annotations(p):
            continue
        svc = _str(d.annotations(p)[SVC_NAME_ANNOTATION])
        if svc in seen:
            out.append(Violation(
                f"spec.predictors[{i}].annotations.{SVC_NAME_ANNOTATION}",
                invalid(f"spec.predictors[{i}]", d.name(p), "Found duplicate service name in "
                        f"{SVC_NAME_ANNOTATION} with value {svc}"),
                f"predictors[{seen[svc]}] already uses {svc!r}; give each predictor its own "
                "service name (e.g. <deployment>-<predictor>)"))
        seen.setdefault(svc, i)
    return out


def no_predictors(d: Sdep) -> list[Violation]:
    if d.predictors:
        return []
    return [Violation("spec.predictors", invalid("spec", d.text("transport"),
                                                 "Graph contains no predictors"),
                      "add at least one predictor (the stable one)")]


def no_engine_graphs(d: Sdep) -> list[Violation]:
    """seldon.io/no-engine (any value, even "false") runs without the executor: one node only."""
    out = []
    for i, p in enumerate(d.predictors):
        if NO_ENGINE_ANNOTATION in d.annotations(p) and _graph_size(d.graph(p)) > 1:
            out.append(Violation(
                f"spec.predictors[{i}].annotations.{NO_ENGINE_ANNOTATION}",
                invalid(f"spec.predictors[{i}]", d.name(p),
                        "Running without engine only valid for single element graphs"),
                f"remove the annotation (its presence counts, whatever its value), or give "
                f"the graph a single node (it has {_graph_size(d.graph(p))})"))
    return out


def predictor_names(d: Sdep) -> list[Violation]:
    seen: dict[str, int] = {}
    out = []
    for i, p in enumerate(d.predictors):
        name = d.name(p)
        if name in seen:
            out.append(Violation(
                f"spec.predictors[{i}].name",
                invalid(f"spec.predictors[{i}]", name, "Duplicate predictor name"),
                f"predictors[{seen[name]}] is also named {name!r}; names must be unique"))
        seen.setdefault(name, i)
    return out


# -- graph nodes (checkPredictiveUnits, for every node of every predictor) -----------------------


def _units(d: Sdep) -> Iterator[tuple[dict[str, Any], Unit]]:
    for i, p in enumerate(d.predictors):
        for unit in d.units(i):
            yield p, unit


def unit_containers(d: Sdep) -> list[Violation]:
    """A node without an implementation runs in the componentSpecs container of the same name."""
    return [
        Violation(f"{u.field}.name",
                  invalid(u.webhook_path, u.name, "Can't find container for Predictive Unit"),
                  f"name a container in componentSpecs[].spec.containers {u.name!r}, or give "
                  "the node a prepackaged implementation (e.g. SKLEARN_SERVER) with a modelUri")
        for p, u in _units(d) if u.needs_container and d.container(p, u.name) is None
    ]


def unit_types(d: Sdep) -> list[Violation]:
    """type UNKNOWN_TYPE says nothing about what the node does unless methods list it."""
    return [
        Violation(f"{u.field}.type",
                  invalid(u.webhook_path, u.name, "Predictive Unit has no implementation methods "
                          "defined. Change to a known type or add what methods it defines"),
                  "set type to MODEL, ROUTER, COMBINER, TRANSFORMER or OUTPUT_TRANSFORMER, or "
                  "list its methods (TRANSFORM_INPUT, TRANSFORM_OUTPUT, ROUTE, AGGREGATE, "
                  "SEND_FEEDBACK)")
        for _, u in _units(d)
        if u.needs_container and u.node.get("type") == UNKNOWN_TYPE and not u.node.get("methods")
    ]


def prepackaged_model_uris(d: Sdep) -> list[Violation]:
    return [
        Violation(f"{u.field}.modelUri",
                  invalid(u.webhook_path, u.name,
                          "Predictive unit modelUri required when using standalone servers"),
                  f"set modelUri to the artifact folder {u.implementation} loads (e.g. "
                  "gs://bucket/breast-cancer/v1 or pvc://models/breast-cancer/v1)")
        for _, u in _units(d)
        if u.prepackaged and u.implementation != HUGGINGFACE_SERVER and not u.node.get("modelUri")
    ]


def prepackaged_protocols(d: Sdep) -> list[Violation]:
    if d.text("protocol") != "tensorflow":
        return []
    return [
        Violation("spec.protocol",
                  invalid(u.webhook_path, u.name, "Prepackaged server does not handle tensorflow "
                          f"protocol {u.implementation}"),
                  f"{u.field} runs {u.implementation}: use protocol v2 (or seldon) for it, or "
                  "TENSORFLOW_SERVER for a tensorflow-protocol model")
        for _, u in _units(d) if u.prepackaged and u.implementation in NO_TENSORFLOW_PROTOCOL
    ]


def prepackaged_servers(d: Sdep) -> list[Violation]:
    """A prepackaged node without its own container image takes the image the operator's
    predictor_servers map lists for its implementation."""
    out = []
    for p, u in _units(d):
        if not u.prepackaged or u.implementation in PREPACKAGED_SERVERS:
            continue
        c = d.container(p, u.name)
        if c is None or not c.get("image"):
            out.append(Violation(
                f"{u.field}.implementation",
                invalid(u.webhook_path, u.name,
                        f"No entry in predictors map for {u.implementation}"),
                f"use one of {_one_of(PREPACKAGED_SERVERS)}, or give the container "
                f"{u.name!r} an image (implementation names are upper case)"))
    return out


def logger_modes(d: Sdep) -> list[Violation]:
    out = []
    for _, u in _units(d):
        logger = u.node.get("logger")
        if logger is not None and not (isinstance(logger, dict) and logger.get("mode")):
            out.append(Violation(f"{u.field}.logger.mode",
                                 invalid(u.webhook_path, "", "No logger mode specified"),
                                 "set mode to all, request or response, or remove the logger"))
    return out


# -- transports across all graphs ----------------------------------------------------------------


def _endpoint_types(d: Sdep) -> dict[str, str]:
    """Each endpoint.type found in any graph -> the first node that sets it."""
    found: dict[str, str] = {}
    for _, u in _units(d):
        endpoint = u.node.get("endpoint")
        kind = _str(endpoint.get("type")) if isinstance(endpoint, dict) else ""
        if kind:
            found.setdefault(kind, f"{u.field}.endpoint.type")
    return found


def endpoint_types(d: Sdep) -> list[Violation]:
    found = _endpoint_types(d)
    if len(found) < 2:
        return []
    where = ", ".join(f"{f} = {k}" for k, f in found.items())
    return [Violation("spec.predictors[].graph.endpoint.type",
                      invalid("spec", "", "Multiple endpoint.types found - can only have 1 type "
                              "in graph. Please use spec.transport"),
                      f"found {where}; remove endpoint.type from the graphs and set "
                      "spec.transport (rest or grpc) instead")]


def mixed_transports(d: Sdep) -> list[Violation]:
    found, spec_transport = _endpoint_types(d), d.text("transport")
    if len(found) != 1 or not spec_transport:
        return []
    kind, where = next(iter(found.items()))
    # Only REST and GRPC are compared (another endpoint.type passes this rule).
    if ENDPOINT_TRANSPORTS.get(kind, spec_transport) == spec_transport:
        return []
    return [Violation(where, invalid("spec", "", "Mixed transport types found. Remove graph "
                                     "endpoint.types if transport set at deployment level"),
                      f"it is {kind} but spec.transport is {spec_transport}; remove "
                      "endpoint.type (spec.transport applies to every node)")]


# -- traffic (checkTraffic) ----------------------------------------------------------------------


def shadow_count(d: Sdep) -> list[Violation]:
    shadows = [i for i, p in enumerate(d.predictors) if d.shadow(p)]
    return [
        Violation(f"spec.predictors[{i}].shadow",
                  invalid("spec", d.name(d.predictors[i]), "Multiple shadows are not allowed"),
                  f"predictors[{shadows[0]}] is already the shadow; set shadow: false on all "
                  "but one")
        for i in shadows[1:]
    ]


def shadow_traffic(d: Sdep) -> list[Violation]:
    return [
        Violation(f"spec.predictors[{i}].traffic",
                  invalid("spec", d.name(p), "shadow traffic is illegal, the traffic number "
                          "should be between [0, 100]"),
                  f"it is {d.traffic(p)}: the percent of requests mirrored to the shadow, 0 to "
                  "100")
        for i, p in enumerate(d.predictors) if d.shadow(p) and not 0 <= d.traffic(p) <= 100
    ]


def _primaries(d: Sdep) -> list[dict[str, Any]]:
    return [p for p in d.predictors if not d.shadow(p)]


def traffic_sum(d: Sdep) -> list[Violation]:
    primaries = _primaries(d)
    total = sum(d.traffic(p) for p in primaries)
    if len(primaries) < 2 or total == 100:
        return []
    detail = " + ".join(f"{d.name(p)} {d.traffic(p)}" for p in primaries)
    return [Violation("spec.predictors[].traffic",
                      invalid("spec", d.name(d.predictors[0]),
                              "Traffic must sum to 100 for multiple predictors"),
                      f"non-shadow traffic is {detail} = {total}; adjust the weights to sum to "
                      "100")]


def single_predictor_traffic(d: Sdep) -> list[Violation]:
    total = sum(d.traffic(p) for p in _primaries(d))
    if len(d.predictors) != 1 or not 0 < total < 100:
        return []
    return [Violation("spec.predictors[0].traffic",
                      invalid("spec", d.name(d.predictors[0]),
                              "Traffic must sum be 100 for a single predictor when set"),
                      f"it is {total}; set it to 100 or leave it out (a lone predictor serves "
                      "every request)")]


Rule = Callable[[Sdep], list[Violation]]

RULES: dict[str, Rule] = {
    # ValidateSeldonDeployment, in the webhook's order
    "protocol": protocol,
    "transport": transport,
    "serverType": server_type,
    "kafka envs": kafka_envs,
    "lone shadow": lone_shadow,
    "duplicate service names": service_names,
    "no predictors": no_predictors,
    "no-engine graphs": no_engine_graphs,
    "duplicate predictor names": predictor_names,
    # checkPredictiveUnits, on every graph node
    "node containers": unit_containers,
    "node types": unit_types,
    "prepackaged modelUri": prepackaged_model_uris,
    "prepackaged protocol": prepackaged_protocols,
    "prepackaged server known": prepackaged_servers,
    "logger mode": logger_modes,
    # transports across every graph
    "one endpoint type": endpoint_types,
    "endpoint type matches transport": mixed_transports,
    # checkTraffic
    "one shadow": shadow_count,
    "shadow traffic": shadow_traffic,
    "traffic sums to 100": traffic_sum,
    "lone predictor traffic": single_predictor_traffic,
}


def violations(obj: dict[str, Any]) -> list[Violation]:
    """Everything the webhook would refuse in this SeldonDeployment manifest."""
    d = Sdep(obj)
    return [v for rule in RULES.values() for v in rule(d)]

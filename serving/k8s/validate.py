"""Validate rendered objects with real engines, never with hand-made approximations where one exists:

- built-in kinds against the official Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
  unknown field is an error, as with `kubectl apply --validate=strict`);
- the SeldonDeployment against the upstream CRD's openAPIV3Schema (read from ../shared/reference),
  made strict the way the API server's fieldValidation=Strict is, plus every rule of the
  operator's admission webhook (serving.k8s.webhook_rules) and our traffic range 0..100;
- ServiceMonitor / PodMonitor: prometheus-operator CRDs that neither ships, so they are checked
  against the subset of monitoring.coreos.com/v1 this chart emits (MONITOR_SCHEMAS), and their
  metadata against the official ObjectMeta.

`check_path` runs all of it on a values file (render + helm lint first) or on rendered manifests.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from ..errors import SpecError
from ..spec import load_spec
from . import chart, webhook_rules
from .errors import ManifestInvalid

CRD_FILE = "seldondeployments.machinelearning.seldon.io.crd.yaml"
SELDON_CRD = chart.REPO_ROOT.parent / "shared" / "reference" / CRD_FILE
"""Where the upstream CRD lives; SERVING_SELDON_CRD overrides it. Never copied into the repo."""

_DURATION = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_NAMESPACE_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "any": {"type": "boolean"},
        "matchNames": {"type": "array", "items": {"type": "string"}},
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "scheme": {"enum": ["http", "https"]},
    },
}


def _monitor_schema(endpoints_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints_key],
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": _SELECTOR,
                    "namespaceSelector": _NAMESPACE_SELECTOR,
                    endpoints_key: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


MONITOR_SCHEMAS = {
    "ServiceMonitor": _monitor_schema("endpoints"),
    "PodMonitor": _monitor_schema("podMetricsEndpoints"),
}


@dataclass
class Report:
    source: str
    checks: list[str]
    kinds: list[str]
    objects: list[dict[str, Any]] = field(default_factory=list)
    """What a plain apply creates (hooks left out), in apply order."""

    def summary(self) -> str:
        return (
            f"{self.source}: valid ({len(self.kinds)} objects: {', '.join(self.kinds)})\n"
            + "\n".join(f"  ok  {c}" for c in self.checks)
        )


def _strict(node: Any) -> Any:
    """An openAPIV3Schema as the API server applies it with fieldValidation=Strict: unknown fields
    are errors (a plain JSON Schema reading would let them through, and the server would prune)."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_path() -> Path:
    return Path(os.environ.get("SERVING_SELDON_CRD", SELDON_CRD))


@functools.cache
def _seldon_validator(path: Path) -> jsonschema.protocols.Validator:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    crd = next(d for d in docs if d.get("kind") == "CustomResourceDefinition")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # OpenAPI v3 schemas are JSON Schema draft 4 plus x-kubernetes-* annotations (ignored here,
    # except int-or-string, which the CRD already spells as anyOf).
    return jsonschema.Draft4Validator(schema)


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(root)"


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return f"unknown field(s) {extra}; remove them or check the spelling"
    return err.message


def _schema_problems(validator: jsonschema.protocols.Validator, obj: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_where(e.absolute_path)}: {_message(e)}" for e in errors]


def _builtin_problems(obj: dict[str, Any], kube_version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{_where(e.absolute_path)}: {_message(e)}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [
            f"no Kubernetes {kube_version} schema for {e.api_version} {e.kind}; check apiVersion"
        ]
    return []


def _metadata_problems(obj: dict[str, Any], kube_version: str) -> list[str]:
    # Custom resources' schemas say only `metadata: object`; the official ObjectMeta is checked by
    # validating the metadata on a ConfigMap, the smallest built-in kind that carries it.
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata") or {}}
    return _builtin_problems(probe, kube_version)


def _seldon_rule_problems(obj: dict[str, Any]) -> list[str]:
    """The operator webhook's rules, then ours: a non-shadow predictor's traffic is a percentage
    (the CRD allows any int32 and the webhook any sum of 100, such as 150 + -50; the ingress does
    not). A shadow's range is the webhook's own rule."""
    problems = [str(v) for v in webhook_rules.violations(obj)]
    d = webhook_rules.Sdep(obj)
    for i, p in enumerate(d.predictors):
        if not d.shadow(p) and not 0 <= d.traffic(p) <= 100:
            problems.append(f"spec.predictors[{i}].traffic: {d.traffic(p)} is outside 0..100; "
                            "a predictor's traffic is a percentage of requests")
    return problems


def object_problems(obj: dict[str, Any], kube_version: str = chart.KUBE_VERSION) -> list[str]:
    """Every problem of one object, each prefixed with Kind/name."""
    kind = obj.get("kind", "?")
    name = (obj.get("metadata") or {}).get("name", "?")
    if kind == "SeldonDeployment":
        path = crd_path()
        if not path.exists():
            problems = [
                f"cannot check against the SeldonDeployment CRD: {path} does not exist; "
                "set SERVING_SELDON_CRD to the CRD file"
            ]
        else:
            problems = _schema_problems(_seldon_validator(path), obj)
        problems += _metadata_problems(obj, kube_version) + _seldon_rule_problems(obj)
    elif kind in MONITOR_SCHEMAS:
        problems = _schema_problems(jsonschema.Draft7Validator(MONITOR_SCHEMAS[kind]), obj)
        problems += _metadata_problems(obj, kube_version)
    else:
        problems = _builtin_problems(obj, kube_version)
    return [f"{kind}/{name}: {p}" for p in problems]


def check_objects(
    objects: list[dict[str, Any]], source: str, kube_version: str = chart.KUBE_VERSION
) -> list[str]:
    """Raise ManifestInvalid listing every problem; return the checks that ran."""
    problems = [p for obj in objects for p in object_problems(obj, kube_version)]
    if problems:
        raise ManifestInvalid(source, problems)
    checks = [f"Kubernetes {kube_version} OpenAPI schemas (strict) for built-in kinds"]
    kinds = {o.get("kind") for o in objects}
    if "SeldonDeployment" in kinds:
        checks.append(f"SeldonDeployment CRD openAPIV3Schema (strict) from {crd_path()}")
        checks.append(
            f"Seldon operator webhook rules (ValidateSeldonDeployment, v1.18.2: "
            f"{len(webhook_rules.RULES)} rules) and traffic 0..100"
        )
    if kinds & set(MONITOR_SCHEMAS):
        checks.append(
            "ServiceMonitor/PodMonitor: the monitoring.coreos.com/v1 fields the chart uses"
        )
    return checks


def load_manifests(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
    objects: list[dict[str, Any]] = []
    for f in files:
        try:
            objects += [d for d in yaml.safe_load_all(f.read_text()) if d]
        except yaml.YAMLError as e:
            raise ManifestInvalid(str(f), [f"not valid YAML: {e}"]) from None
    return objects


def _is_manifest(objects: list[dict[str, Any]]) -> bool:
    return bool(objects) and all(isinstance(o, dict) and "apiVersion" in o for o in objects)


def check_values(path: Path, kube_version: str = chart.KUBE_VERSION) -> Report:
    load_spec(path)  # the typed spec first: its messages are the most precise
    values = yaml.safe_load(path.read_text()) or {}
    checks = ["serving.spec (pydantic) with the Seldon operator's rules"]
    rendered = chart.render(values, source=str(path))
    checks.append("Helm v4: values.schema.json, validateValues, templates")
    lint = chart.lint(values, kube_version=kube_version)
    if lint:
        raise ManifestInvalid(f"{path} (helm lint --strict)", lint)
    checks.append("helm lint --strict")
    objects = rendered.objects + rendered.hooks
    checks += check_objects(objects, str(path), kube_version)
    kinds = [f"{o['kind']}/{o['metadata']['name']}" for o in objects]
    return Report(str(path), checks, kinds, rendered.objects)


def check_path(path: str | Path, kube_version: str = chart.KUBE_VERSION) -> Report:
    """A values file, a rendered manifest, or a folder of manifests."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path} does not exist; pass a values file or rendered manifests")
    objects = load_manifests(path)
    if not _is_manifest(objects):
        return check_values(path, kube_version)
    checks = check_objects(objects, str(path), kube_version)
    kinds = [f"{o.get('kind')}/{(o.get('metadata') or {}).get('name')}" for o in objects]
    return Report(str(path), checks, kinds, objects)

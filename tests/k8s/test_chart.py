"""The chart renders, with Helm's own engine, the SeldonDeployment and companions issue 4 asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving import training
from serving.k8s import chart, validate
from serving.server import MLServerProcess
from serving.spec import load_spec

from .conftest import VALUES

MODEL = "breast-cancer"


def render(values: dict[str, Any] | None = None) -> chart.Rendered:
    return chart.render(values)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [obj] = [o for o in objects
             if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return obj


def sdep_of(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return one(render(values).objects, "SeldonDeployment")


def containers(predictor: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for spec in predictor["componentSpecs"] for c in spec["spec"]["containers"]]


def predictor(sdep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in sdep["spec"]["predictors"] if p["name"] == name)


def test_the_values_file_is_the_spec_the_local_stack_loads() -> None:
    spec = load_spec(VALUES)
    assert (spec.deployment.name, spec.deployment.namespace, spec.model.name) == (
        "breast-cancer",
        "models",
        MODEL,
    )
    assert [(p.name, p.version, p.traffic, p.shadow) for p in spec.predictors] == [
        ("stable", "v1", 90, False),
        ("canary", "v2", 10, False),
        ("shadow", "v3", 100, True),
    ]


def test_default_values_render_a_v2_seldon_deployment_with_stable_canary_and_shadow() -> None:
    sdep = sdep_of()
    assert sdep["apiVersion"] == "machinelearning.seldon.io/v1"
    assert sdep["metadata"] == {**sdep["metadata"], "name": "breast-cancer", "namespace": "models"}
    assert sdep["spec"]["protocol"] == "v2"
    assert sdep["spec"]["name"] == sdep["metadata"]["name"]
    got = [(p["name"], p["traffic"], p.get("shadow", False)) for p in sdep["spec"]["predictors"]]
    assert got == [("stable", 90, False), ("canary", 10, False), ("shadow", 100, True)]
    for p in sdep["spec"]["predictors"]:
        assert p["graph"]["name"] == MODEL  # every predictor answers /v2/models/breast-cancer
        assert p["labels"]["version"] == p["annotations"]["version"]
        assert p["annotations"]["seldon.io/svc-name"] == f"breast-cancer-{p['name']}"
    assert [p["labels"]["version"] for p in sdep["spec"]["predictors"]] == ["v1", "v2", "v3"]


def test_custom_predictors_run_the_project_runtime_image_on_the_dockerfile_ports() -> None:
    stable = predictor(sdep_of(), "stable")
    assert "implementation" not in stable["graph"]
    [container] = containers(stable)
    assert container["name"] == MODEL  # the operator matches the container to the graph node
    assert container["image"] == "serving-runtime:0.1.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 9000,
        "grpc": 9500,
        "metrics": 6000,
    }
    assert {"name": "MLSERVER_METRICS_ENDPOINT", "value": "/prometheus"} in container["env"]


def test_custom_predictors_mount_their_version_read_only_from_the_model_pvc() -> None:
    stable = predictor(sdep_of(), "stable")
    [container] = containers(stable)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/mnt/models")
    assert mount == {
        "name": "model",
        "mountPath": "/mnt/models",
        "subPath": "breast-cancer/v1",
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in stable["componentSpecs"][0]["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_probes_ask_mlserver_and_the_model_itself() -> None:
    for p in sdep_of()["spec"]["predictors"]:
        [container] = containers(p)
        # MLServer's own /v2/health/ready is true with no model loaded: readiness asks the model.
        assert container["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{MODEL}/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_every_pod_meets_pod_security_restricted() -> None:
    rendered = render(
        {
            "predictors": [
                {"name": "stable", "version": "v1", "traffic": 50},
                {
                    "name": "prepackaged",
                    "version": "v2",
                    "traffic": 50,
                    "server": "SKLEARN_SERVER",
                    "modelUri": "gs://bucket/breast-cancer/v2",
                },
            ]
        }
    )
    pod_specs = [
        c["spec"]
        for p in one(rendered.objects, "SeldonDeployment")["spec"]["predictors"]
        for c in p["componentSpecs"]
    ]
    pod_specs.append(one(rendered.hooks, "Pod")["spec"])
    pod_specs.append(one(rendered.objects, "Deployment", "breast-cancer-comparator")["spec"][
        "template"]["spec"])
    for spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 1
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_a_sklearn_server_predictor_uses_seldons_prepackaged_server_and_its_model_uri() -> None:
    sdep = sdep_of(
        {
            "predictors": [
                {
                    "name": "stable",
                    "version": "v1",
                    "server": "SKLEARN_SERVER",
                    "modelUri": "gs://b/breast-cancer/v1",
                },
            ]
        }
    )
    stable = predictor(sdep, "stable")
    assert stable["graph"]["implementation"] == "SKLEARN_SERVER"
    assert stable["graph"]["modelUri"] == "gs://b/breast-cancer/v1"
    [container] = containers(stable)
    # No image, env or ports: the operator fills them in (and skips its env if we set any).
    assert not {"image", "env", "ports", "volumeMounts"} & set(container)
    assert "volumes" not in stable["componentSpecs"][0]["spec"]


def test_replicas_hpa_and_pdb_reach_the_component_spec() -> None:
    sdep = sdep_of(
        {
            "predictors": [
                {
                    "name": "stable",
                    "version": "v1",
                    "replicas": 3,
                    "pdb": {"enabled": True, "minAvailable": 2},
                    "hpa": {
                        "enabled": True,
                        "minReplicas": 2,
                        "maxReplicas": 6,
                        "cpuTargetUtilization": 60,
                    },
                    "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
                },
            ]
        }
    )
    stable = predictor(sdep, "stable")
    component = stable["componentSpecs"][0]
    assert stable["replicas"] == 3
    assert component["pdbSpec"] == {"minAvailable": 2}
    assert component["hpaSpec"] == {
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 60}}
        ],
    }
    assert containers(stable)[0]["resources"] == {
        "requests": {"cpu": "1"},
        "limits": {"memory": "2Gi"},
    }


def test_a_predictor_given_partly_gets_the_specs_defaults() -> None:
    stable = predictor(
        sdep_of({"predictors": [{"name": "stable", "version": "v1", "hpa": {"enabled": True}}]}),
        "stable",
    )
    assert stable["componentSpecs"][0]["hpaSpec"]["maxReplicas"] == 3  # Hpa.max_replicas default
    assert containers(stable)[0]["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi"}
    assert stable["traffic"] == 100  # a lone non-shadow predictor serves everything


def ns(name: str) -> str:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}
    return json.dumps(peer, sort_keys=True)


def test_the_network_policy_admits_only_the_ingress_prometheus_and_the_helm_test() -> None:
    policy = one(render().objects, "NetworkPolicy", "breast-cancer-model-pods")
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"seldon-deployment-id": "breast-cancer"}
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = {}
    for rule in policy["spec"]["ingress"]:
        [peer] = rule["from"]
        key = json.dumps(peer, sort_keys=True)
        sources[key] = sorted(p["port"] for p in rule["ports"])
    assert sources[ns("istio-system")] == [5001, 8000]
    assert sources[ns("monitoring")] == [6000, 8000]
    assert len(sources) == 3
    # MLServer's unauthenticated model repository API (9000/9500) is never reachable.
    assert not {9000, 9500} & {p for ports in sources.values() for p in ports}


def test_monitors_are_optional_and_select_the_deployments_pods_and_predictor_services() -> None:
    assert not {"PodMonitor", "ServiceMonitor"} & {o["kind"] for o in render().objects}
    objects = render(
        {
            "monitoring": {
                "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                "serviceMonitor": {"enabled": True, "interval": "30s"},
            }
        }
    ).objects
    pod_monitor = one(objects, "PodMonitor", "breast-cancer")
    service_monitor = one(objects, "ServiceMonitor", "breast-cancer")
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/prometheus", "interval": "15s"}
    ]
    assert service_monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/prometheus", "interval": "30s"}
    ]
    assert service_monitor["spec"]["selector"]["matchExpressions"] == [
        {"key": "seldon-app-svc", "operator": "DoesNotExist"}
    ]


def test_the_grafana_dashboard_charts_rate_errors_latency_quantiles_and_shadow_agreement() -> None:
    config_map = one(render().objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["breast-cancer.json"])
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}
    executor = "seldon_api_executor_server_requests_seconds"
    assert any(
        f"rate({executor}_count" in e and "predictor_name" in e
        for e in exprs["Requests per second by predictor"]
    )
    assert any('code!~"2..|OK"' in e for e in exprs["Error ratio by predictor"])
    quantiles = exprs["Latency quantiles by predictor"]
    assert [e.split(",")[0] for e in quantiles] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]
    assert all(f"{executor}_bucket" in e for e in quantiles)
    assert "seldon_shadow_agreement_ratio" in exprs["Shadow agreement"][0]
    assert "seldon_shadow_requests_total" in exprs["Shadow requests by outcome"][0]
    assert dashboard["templating"]["list"][1]["current"]["value"] == "breast-cancer"


def test_helm_test_sends_one_inference_to_the_first_non_shadow_predictor() -> None:
    rendered = render(
        {
            "predictors": [
                {"name": "shadow", "version": "v3", "shadow": True, "traffic": 10},
                {"name": "main", "version": "v1", "traffic": 100},
            ]
        }
    )
    assert "Pod" not in {o["kind"] for o in rendered.objects}  # a hook, never a plain apply
    pod = one(rendered.hooks, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["TARGET_URL"] == "http://breast-cancer-main.models.svc:8000"
    assert env["MODEL"] == MODEL


def test_the_helm_test_script_makes_a_real_inference(mlserver_v1: MLServerProcess) -> None:
    """The hook's own command, run here against a real MLServer (the executor forwards the same path)."""
    pod = one(render().hooks, "Pod")
    [container] = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    env["TARGET_URL"] = mlserver_v1.rest_url
    result = subprocess.run(
        [sys.executable, *container["command"][1:]],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "inference ok: label=" in result.stdout
    assert env["MODEL"] == training.MODEL_NAME


def test_notes_tell_the_traffic_split_and_how_to_check_it() -> None:
    notes = render().notes
    assert "stable     version v1  traffic 90%" in notes
    assert "shadow     version v3  mirror 100%" in notes
    assert "/seldon/models/breast-cancer/v2/models/breast-cancer/infer" in notes
    assert "helm test breast-cancer -n models" in notes


COMPARATOR = "breast-cancer-comparator"


def test_with_a_shadow_every_predictors_graph_logs_to_the_comparator_by_role() -> None:
    loggers = {p["name"]: p["graph"].get("logger") for p in sdep_of()["spec"]["predictors"]}
    base = f"http://{COMPARATOR}.models.svc.cluster.local:8080/events"
    assert loggers == {"stable": {"mode": "all", "url": f"{base}/primary"},
                       "canary": {"mode": "all", "url": f"{base}/primary"},
                       "shadow": {"mode": "all", "url": f"{base}/shadow"}}
    # no shadow: nothing to compare, no events; comparator.enabled false: no loggers either
    no_shadow = {"predictors": [{"name": "stable", "version": "v1", "traffic": 100}]}
    rendered = render(no_shadow)
    assert all("logger" not in p["graph"]
               for p in one(rendered.objects, "SeldonDeployment")["spec"]["predictors"])
    # ... but the comparator runs, so that a rollout's mirror step (it re-renders only the
    # SeldonDeployment) finds it
    assert one(rendered.objects, "Deployment", COMPARATOR)
    off = render({"comparator": {"enabled": False}})
    assert all("logger" not in p["graph"]
               for p in one(off.objects, "SeldonDeployment")["spec"]["predictors"])
    assert COMPARATOR not in {o["metadata"]["name"] for o in off.objects}


def test_the_comparator_runs_hardened_with_probes_resources_and_the_deployment_name() -> None:
    objects = render({"comparator": {"port": 8181, "ttlSeconds": 12, "maxPending": 500}}).objects
    deployment = one(objects, "Deployment", COMPARATOR)
    assert deployment["spec"]["replicas"] == 1  # pairing is in memory
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    assert container["command"] == [
        "serving", "comparator", "--host=0.0.0.0", "--port=8181", "--deployment=breast-cancer",
        "--ttl=12", "--max-pending=500", "--rtol=1e-06"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"memory": "512Mi"}}
    assert {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe",
                                                       "livenessProbe")} == {
        "/health/live", "/health/ready"}
    service = one(objects, "Service", COMPARATOR)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8181, "targetPort": "http",
                                         "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # the executors' logger URL follows the port
    sdep = one(objects, "SeldonDeployment")
    assert sdep["spec"]["predictors"][0]["graph"]["logger"]["url"].endswith(
        ":8181/events/primary")


def test_only_the_executors_and_prometheus_reach_the_comparator() -> None:
    objects = render().objects
    policy = one(objects, "NetworkPolicy", COMPARATOR)
    labels = one(objects, "Deployment", COMPARATOR)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"] == {"matchLabels": labels}
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
                                "seldon-deployment-id": "breast-cancer"}}},
                            json.loads(ns("monitoring"))]


def test_monitors_scrape_the_comparator_too() -> None:
    objects = render({"monitoring": {"podMonitor": {"enabled": True},
                                     "serviceMonitor": {"enabled": True}}}).objects
    labels = one(objects, "Deployment", COMPARATOR)["spec"]["template"]["metadata"]["labels"]
    pod_monitor = one(objects, "PodMonitor", COMPARATOR)
    assert pod_monitor["spec"]["selector"] == {"matchLabels": labels}
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s"}]
    service_monitor = one(objects, "ServiceMonitor", COMPARATOR)
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # the model pods' ServiceMonitor does not select the comparator's Service (no seldon label)
    service_labels = one(objects, "Service", COMPARATOR)["metadata"]["labels"]
    assert "seldon-deployment-id" not in service_labels


def test_helm_lint_strict_finds_nothing() -> None:
    assert chart.lint() == []


@pytest.mark.parametrize(
    "values",
    [
        None,
        {"monitoring": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}},
        {
            "predictors": [
                {
                    "name": "stable",
                    "version": "v1",
                    "traffic": 70,
                    "hpa": {"enabled": True},
                    "pdb": {"enabled": True},
                    "env": {"MLSERVER_LOG_LEVEL": "debug"},
                },
                {
                    "name": "prepackaged",
                    "version": "v2",
                    "traffic": 30,
                    "server": "SKLEARN_SERVER",
                    "modelUri": "s3://bucket/breast-cancer/v2",
                },
            ]
        },
    ],
    ids=["defaults", "monitors", "hpa-pdb-sklearn"],  # the last: no shadow, no loggers
)
def test_every_rendered_object_passes_kubernetes_schemas_and_the_seldon_crd(
    values: dict[str, Any] | None, needs_crd: Path
) -> None:
    rendered = render(values)
    checks = validate.check_objects(rendered.objects + rendered.hooks, "rendered chart")
    assert any("SeldonDeployment CRD" in c for c in checks)


def undocumented(values: dict[str, Any], text: str, prefix: str = "") -> list[str]:
    missing = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if f"@param {path} " in text:
            continue
        if isinstance(value, dict) and value:
            missing += undocumented(value, text, f"{path}.")
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, dict) for v in value)
            and key == "predictors"
        ):
            for item in value:
                missing += undocumented(item, text, f"{path}[].")
        else:
            missing.append(path)
    return missing


def test_every_value_is_documented() -> None:
    import yaml

    text = VALUES.read_text()
    assert undocumented(yaml.safe_load(text), text) == []

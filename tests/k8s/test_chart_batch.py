"""The chart's batch CronJob: rendered by Helm's own engine, checked against the Kubernetes
schemas, hardened like the model pods, aimed at the stable predictor's Service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.k8s import chart, validate
from serving.k8s.errors import ChartError

ON = {"batch": {"enabled": True}}


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return chart.render(values).objects


def cronjob(values: dict[str, Any] | None = None) -> dict[str, Any]:
    [job] = [o for o in objects(values) if o["kind"] == "CronJob"]
    return job


def pod(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(cronjob(values)["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def command(values: dict[str, Any] | None = None) -> list[str]:
    return list(pod(values)["containers"][0]["command"])


def arg(cmd: list[str], option: str) -> str:
    return cmd[cmd.index(option) + 1]


def test_disabled_by_default() -> None:
    assert not [o for o in objects() if o["kind"] == "CronJob" or "batch" in o["metadata"]["name"]]


def test_it_runs_serving_batch_score_in_the_runtime_image_against_the_stable_service() -> None:
    job = cronjob({"batch": {"enabled": True, "schedule": "15 2 * * *", "idColumn": "claim_id",
                             "timeZone": "Europe/Berlin"}})
    assert job["spec"]["schedule"] == "15 2 * * *"
    assert job["spec"]["timeZone"] == "Europe/Berlin"
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    container = pod(ON)["containers"][0]
    assert container["image"] == "serving-runtime:0.1.0"
    cmd = command(ON)
    assert cmd[:4] == ["serving", "batch", "score", "/data/in"]
    # the default values' stable predictor, through its Service's executor port
    assert arg(cmd, "--url") == "http://breast-cancer-stable.models.svc:8000"
    assert arg(cmd, "--model") == "breast-cancer"
    assert arg(cmd, "--out") == "/data/out/predictions/$(JOB_NAME)"
    assert arg(cmd, "--batch-id") == "$(JOB_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-name']")


def test_the_stable_predictor_is_the_one_named_stable_else_the_most_traffic() -> None:
    predictors = [{"name": "main", "version": "v1", "traffic": 70},
                  {"name": "canary", "version": "v2", "traffic": 30}]
    cmd = command({**ON, "predictors": predictors})
    assert arg(cmd, "--url") == "http://breast-cancer-main.models.svc:8000"
    grpc = command({"batch": {"enabled": True, "transport": "grpc"}, "predictors": predictors})
    assert arg(grpc, "--grpc") == "breast-cancer-main.models.svc:5001" and "--url" not in grpc


def test_the_pod_is_hardened_like_the_model_pods() -> None:
    spec = pod(ON)
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000,
                                       "runAsGroup": 1000, "fsGroup": 1000,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    sc = spec["containers"][0]["securityContext"]
    assert sc == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                  "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                  "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["input"]["readOnly"] is True and mounts["tmp"]["mountPath"] == "/tmp"


def test_volumes_and_a_sql_url_from_a_secret() -> None:
    values = {"batch": {"enabled": True, "inputVolume": {"claimName": "claims", "subPath": "in"},
                        "outputVolume": {"claimName": "scores"},
                        "outputUrlSecret": "batch-db", "table": "scores"}}
    spec = pod(values)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["input"]["persistentVolumeClaim"] == {"claimName": "claims", "readOnly": True}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "scores"}
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["input"]["subPath"] == "in"
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["BATCH_OUTPUT_URL"]["valueFrom"]["secretKeyRef"] == {"name": "batch-db",
                                                                    "key": "url"}
    cmd = spec["containers"][0]["command"]
    assert arg(cmd, "--out") == "$(BATCH_OUTPUT_URL)" and arg(cmd, "--table") == "scores"
    assert arg(cmd, "--state-dir") == "/data/out/.batch-state/$(JOB_NAME)"


def test_a_network_policy_admits_the_batch_pods_to_the_model_pods_executor() -> None:
    [policy] = [o for o in objects(ON) if o["metadata"]["name"].endswith("batch-to-model-pods")]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"seldon-deployment-id":
                                                            "breast-cancer"}
    [rule] = policy["spec"]["ingress"]
    pod_labels = cronjob(ON)["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert {p["port"] for p in rule["ports"]} == {8000, 5001}
    off = {**ON, "networkPolicy": {"enabled": False}}
    assert not [o for o in objects(off) if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("values", [ON, {"batch": {"enabled": True, "transport": "grpc",
                                                    "outputUrlSecret": "db",
                                                    "inputVolume": {"claimName": "in"}}}],
                         ids=["rest-files", "grpc-sql"])
def test_it_passes_the_kubernetes_schemas_and_helm_lint(values: dict[str, Any],
                                                        needs_crd: Path) -> None:
    rendered = chart.render(values)
    checks = validate.check_objects(rendered.objects, "rendered chart")
    assert any("Kubernetes" in c for c in checks)
    assert chart.lint(values) == []


def test_bad_batch_values_are_refused_naming_the_key() -> None:
    with pytest.raises(ChartError, match="rowsPerRequest"):
        chart.render({"batch": {"enabled": True, "rowsPerRequest": 0}})
    with pytest.raises(ChartError, match="transport"):
        chart.render({"batch": {"enabled": True, "transport": "kafka"}})

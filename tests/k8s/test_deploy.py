"""`serving deploy` against an API server over HTTP: server-side apply with a field manager,
conflicts reported field by field, then a wait for Available that explains a failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from kubernetes.dynamic import DynamicClient

from serving.cli import main
from serving.k8s import deploy, wait
from serving.k8s.client import connect
from serving.k8s.errors import ApplyConflict, ChartError, ClusterError, NotAvailable

from .conftest import VALUES, write_values
from .fake_apiserver import SELDON, FakeApiServer

SDEP_PATH = "/apis/machinelearning.seldon.io/v1/namespaces/models/seldondeployments/breast-cancer"

# deploy validates against the upstream Seldon CRD before it touches the cluster.
pytestmark = pytest.mark.usefixtures("needs_crd")


def available_after(reads: int) -> Any:
    """Play the Seldon operator: Creating with pods coming up, then Available."""

    def operator(sdep: dict[str, Any], read: int) -> None:
        ready = min(read, reads)
        sdep["status"] = {
            "state": "Available" if read >= reads else "Creating",
            "observedGeneration": sdep["metadata"]["generation"],
            "deploymentStatus": {
                "breast-cancer-stable-0-breast-cancer": {
                    "replicas": 2,
                    "availableReplicas": min(2, ready),
                },
                "breast-cancer-canary-0-breast-cancer": {
                    "replicas": 1,
                    "availableReplicas": 1 if read >= reads else 0,
                },
            },
            "conditions": [{"type": "Ready", "status": "True" if read >= reads else "False"}],
        }

    return operator


def lines() -> tuple[list[str], Any]:
    out: list[str] = []
    return out, out.append


def test_deploy_server_side_applies_every_object_with_the_field_manager(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    out, progress = lines()
    assert deploy.deploy(VALUES, api=api, wait=False, progress=progress) is None
    patches = [(path, ctype) for method, path, ctype in apiserver.requests if method == "PATCH"]
    assert [p.rsplit("/", 2)[-2] for p, _ in patches] == [
        "networkpolicies",
        "networkpolicies",
        "configmaps",
        "seldondeployments",
        "deployments",  # the comparator and its Service
        "services",
    ]
    assert {ctype for _, ctype in patches} == {"application/apply-patch+yaml"}
    sdep = apiserver.get(SELDON.api_version, "SeldonDeployment", "models", "breast-cancer")
    assert sdep is not None and sdep["spec"]["protocol"] == "v2"
    assert apiserver.owners[(SELDON.api_version, "seldondeployments", "models", "breast-cancer")][
        ("spec", "predictors")
    ] == ("serving", "Apply")
    assert (
        apiserver.get("v1", "Pod", "models", "breast-cancer-test-inference") is None
    )  # hooks stay out
    assert "applied SeldonDeployment models/breast-cancer (generation 1)" in out
    assert out[-1] == "applied Service models/breast-cancer-comparator (generation 1)"


def test_deploy_is_idempotent(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    sdep = apiserver.get(SELDON.api_version, "SeldonDeployment", "models", "breast-cancer")
    assert sdep is not None and sdep["metadata"]["generation"] == 1


def test_a_missing_namespace_is_reported_with_the_fix(
    apiserver: FakeApiServer, api: DynamicClient
) -> None:
    with pytest.raises(ClusterError) as e:
        deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    assert "namespace 'models' does not exist" in e.value.message
    assert "--create-namespace" in e.value.message


def test_create_namespace_applies_it_with_pod_security_labels(
    apiserver: FakeApiServer, api: DynamicClient
) -> None:
    deploy.deploy(VALUES, api=api, wait=False, create_namespace=True, progress=lambda _: None)
    ns = apiserver.get("v1", "Namespace", None, "models")
    assert (
        ns is not None
        and ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"] == "restricted"
    )


def test_fields_another_manager_changed_are_a_conflict_until_forced(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    # Someone edits the predictors by hand (a merge patch, like `kubectl edit`).
    sdeps = api.resources.get(api_version=SELDON.api_version, kind="SeldonDeployment")
    live = apiserver.get(SELDON.api_version, "SeldonDeployment", "models", "breast-cancer")
    assert live is not None
    edited = live["spec"]["predictors"]
    edited[0]["replicas"] = 5
    api.patch(
        sdeps,
        body={"spec": {"predictors": edited}},
        name="breast-cancer",
        namespace="models",
        content_type="application/merge-patch+json",
        field_manager="kubectl-edit",
    )
    with pytest.raises(ApplyConflict) as e:
        deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    assert 'conflict with "kubectl-edit": .spec.predictors' in e.value.message
    assert "--force-conflicts" in e.value.message
    deploy.deploy(VALUES, api=api, wait=False, force_conflicts=True, progress=lambda _: None)
    live = apiserver.get(SELDON.api_version, "SeldonDeployment", "models", "breast-cancer")
    assert live is not None and live["spec"]["predictors"][0]["replicas"] == 2


def test_invalid_values_never_reach_the_cluster(
    apiserver: FakeApiServer, api: DynamicClient, tmp_path: Path
) -> None:
    values = yaml.safe_load(VALUES.read_text())
    values["predictors"][0]["modelUri"] = "s3://bucket/v1"  # a custom predictor needs a PVC
    with pytest.raises(ChartError):
        deploy.deploy(write_values(tmp_path, values), api=api, wait=False, progress=lambda _: None)
    assert not [r for r in apiserver.requests if r[0] == "PATCH"]


def test_deploy_waits_with_progress_until_available(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    apiserver.operator = available_after(reads=3)
    out, progress = lines()
    sdep = deploy.deploy(VALUES, api=api, interval=0.01, progress=progress)
    assert sdep is not None and sdep["status"]["state"] == "Available"
    waits = [line for line in out if line.startswith("breast-cancer:")]
    assert (
        waits[0]
        == "breast-cancer: Creating  [canary-0-breast-cancer 0/1, stable-0-breast-cancer 1/2]"
    )
    assert (
        waits[-1]
        == "breast-cancer: Available  [canary-0-breast-cancer 1/1, stable-0-breast-cancer 2/2]"
    )


def test_an_available_state_from_an_older_generation_does_not_count(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    def stale_operator(sdep: dict[str, Any], read: int) -> None:
        observed = sdep["metadata"]["generation"] - (1 if read < 3 else 0)
        sdep["status"] = {"state": "Available", "observedGeneration": observed}

    apiserver.operator = stale_operator
    deploy.deploy(VALUES, api=api, interval=0.01, progress=lambda _: None)
    assert (
        apiserver.reads[(SELDON.api_version, "seldondeployments", "models", "breast-cancer")] == 3
    )


def failing_pods(apiserver: FakeApiServer) -> None:
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "breast-cancer-stable-0-breast-cancer-abc",
                "namespace": "models",
                "labels": {"seldon-deployment-id": "breast-cancer"},
            },
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "breast-cancer",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": 'Back-off pulling image "serving-runtime:0.1.0"',
                            }
                        },
                    },
                    {
                        "name": "seldon-container-engine",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {}},
                    },
                ],
            },
        }
    )
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "breast-cancer-canary-0-breast-cancer-def",
                "namespace": "models",
                "labels": {"seldon-deployment-id": "breast-cancer"},
            },
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 Insufficient memory.",
                    }
                ],
            },
        }
    )
    apiserver.put(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "breast-cancer.1", "namespace": "models"},
            "involvedObject": {"name": "breast-cancer", "kind": "SeldonDeployment"},
            "type": "Warning",
            "reason": "InternalError",
            "message": "webhook said no",
        }
    )


def test_a_failed_deployment_prints_its_conditions_and_the_pods_reasons(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    def operator(sdep: dict[str, Any], read: int) -> None:
        sdep["status"] = {
            "state": "Failed" if read > 1 else "Creating",
            "description": "Deployment breast-cancer-stable-0-breast-cancer failed",
            "conditions": [
                {"type": "DeploymentsReady", "status": "False", "reason": "Deployments not ready"},
                {"type": "ServicesReady", "status": "True"},
            ],
        }

    apiserver.operator = operator
    failing_pods(apiserver)
    with pytest.raises(NotAvailable) as e:
        deploy.deploy(VALUES, api=api, interval=0.01, progress=lambda _: None)
    message = e.value.message
    assert "SeldonDeployment models/breast-cancer failed:" in message
    assert "operator: Deployment breast-cancer-stable-0-breast-cancer failed" in message
    assert "condition DeploymentsReady=False (Deployments not ready)" in message
    assert "ServicesReady" not in message
    assert "container breast-cancer: ImagePullBackOff: Back-off pulling image" in message
    assert (
        "not scheduled (Unschedulable): 0/1 nodes are available: 1 Insufficient memory." in message
    )
    assert "event InternalError: webhook said no" in message
    assert "seldon-container-engine" not in message


def test_a_deployment_that_never_becomes_available_times_out_with_reasons(
    apiserver: FakeApiServer, api: DynamicClient, models_namespace: str
) -> None:
    apiserver.operator = available_after(reads=10**6)
    deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
    now = [0.0]
    with pytest.raises(NotAvailable) as e:
        wait.wait_available(
            api,
            "models",
            "breast-cancer",
            timeout=30,
            interval=10,
            progress=lambda _: None,
            clock=lambda: now[0],
            sleep=lambda s: now.__setitem__(0, now[0] + s),
        )
    assert "is not Available after 30s" in e.value.message
    assert "condition Ready=False" in e.value.message


def test_a_cluster_without_seldon_core_is_told_to_install_it(tmp_path: Path) -> None:
    server = FakeApiServer(seldon=False).start()
    try:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = connect(str(kubeconfig), discovery_cache=str(tmp_path / "cache.json"))
        server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "models"}})
        with pytest.raises(ClusterError) as e:
            deploy.deploy(VALUES, api=api, wait=False, progress=lambda _: None)
        assert "serves no machinelearning.seldon.io/v1 SeldonDeployment API" in e.value.message
        assert "install Seldon Core v1" in e.value.message
    finally:
        server.stop()


def test_a_bad_kubeconfig_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as e:
        connect(str(tmp_path / "missing"))
    assert "cannot load the kubeconfig" in e.value.message


def test_the_deploy_command_applies_and_waits(
    apiserver: FakeApiServer,
    kubeconfig: Path,
    models_namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apiserver.operator = available_after(reads=2)
    monkeypatch.setattr(wait.time, "sleep", lambda _: None)
    result = CliRunner().invoke(
        main, ["deploy", "--kubeconfig", str(kubeconfig), "--timeout", "60"]
    )
    assert result.exit_code == 0, result.output
    assert "applied SeldonDeployment models/breast-cancer" in result.output
    assert result.output.strip().endswith("SeldonDeployment models/breast-cancer is Available")


def test_the_deploy_command_exits_non_zero_on_a_conflict(
    apiserver: FakeApiServer, kubeconfig: Path, models_namespace: str
) -> None:
    runner = CliRunner()
    assert (
        runner.invoke(main, ["deploy", "--kubeconfig", str(kubeconfig), "--no-wait"]).exit_code == 0
    )
    apiserver.owners[(SELDON.api_version, "seldondeployments", "models", "breast-cancer")][
        ("spec", "protocol")
    ] = ("helm", "Apply")
    key = (SELDON.api_version, "seldondeployments", "models", "breast-cancer")
    apiserver.objects[key]["spec"]["protocol"] = "seldon"
    result = runner.invoke(main, ["deploy", "--kubeconfig", str(kubeconfig), "--no-wait"])
    assert result.exit_code == 4
    assert 'conflict with "helm": .spec.protocol' in result.output
    assert apiserver.objects[key]["spec"]["protocol"] == "seldon"  # nothing overwritten

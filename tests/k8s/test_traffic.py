"""The Kubernetes traffic backend: weights and mirror percent on a live SeldonDeployment, set with
a patch type custom resources accept, refused up front when the operator would refuse them."""

from __future__ import annotations

import pytest
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from serving.errors import SpecError
from serving.k8s.errors import ClusterError
from serving.k8s.traffic import Traffic, get_traffic, set_traffic

from .fake_apiserver import SELDON, FakeApiServer

KEY = (SELDON.api_version, "seldondeployments", "models", "breast-cancer")

# deploy validates against the upstream Seldon CRD before it touches the cluster.
pytestmark = pytest.mark.usefixtures("needs_crd")


def test_get_traffic_reads_weights_and_the_mirror_percent(
    deployed: FakeApiServer, api: DynamicClient
) -> None:
    assert get_traffic(api, "models", "breast-cancer") == Traffic(
        weights={"stable": 90, "canary": 10}, shadow="shadow", shadow_percent=100
    )


def test_set_traffic_moves_weight_with_one_json_patch(
    deployed: FakeApiServer, api: DynamicClient
) -> None:
    got = set_traffic(
        api, "models", "breast-cancer", {"stable": 75, "canary": 25}, shadow_percent=50
    )
    assert got == Traffic(weights={"stable": 75, "canary": 25}, shadow="shadow", shadow_percent=50)
    patches = [r for r in deployed.requests if r[0] == "PATCH"]
    assert [ctype for _, _, ctype in patches] == ["application/json-patch+json"]
    stored = deployed.objects[KEY]
    assert [p["traffic"] for p in stored["spec"]["predictors"]] == [75, 25, 50]
    assert stored["metadata"]["generation"] == 2  # the operator sees a new spec
    assert deployed.owners[KEY][("spec", "predictors")] == ("serving", "Update")


def test_the_mirror_percent_stays_when_not_given(
    deployed: FakeApiServer, api: DynamicClient
) -> None:
    assert (
        set_traffic(api, "models", "breast-cancer", {"stable": 0, "canary": 100}).shadow_percent
        == 100
    )


def test_custom_resources_refuse_the_clients_default_strategic_merge_patch(
    deployed: FakeApiServer, api: DynamicClient
) -> None:
    """Why set_traffic names its patch type: DynamicClient.patch defaults to strategic merge."""
    sdeps = api.resources.get(api_version=SELDON.api_version, kind="SeldonDeployment")
    with pytest.raises(DynamicApiError) as e:
        api.patch(sdeps, body={"spec": {"replicas": 2}}, name="breast-cancer", namespace="models")
    assert e.value.status == 415
    merged = api.patch(
        sdeps,
        body={"spec": {"replicas": 2}},
        name="breast-cancer",
        namespace="models",
        content_type="application/merge-patch+json",
    )
    assert merged.spec.replicas == 2


@pytest.mark.parametrize(
    ("weights", "shadow_percent", "says"),
    [
        (
            {"stable": 60, "canary": 30},
            None,
            "non-shadow traffic must sum to 100 when there are several",
        ),
        ({"stable": 100}, None, "give exactly the non-shadow predictors ['canary', 'stable']"),
        ({"stable": 50, "canary": 50, "shadow": 0}, None, "give exactly the non-shadow predictors"),
        ({"stable": 150, "canary": -50}, None, "within 0..100"),
        ({"stable": 50, "canary": 50}, 101, "within 0..100"),
    ],
)
def test_what_the_operator_would_refuse_is_refused_before_anything_is_sent(
    deployed: FakeApiServer,
    api: DynamicClient,
    weights: dict[str, int],
    shadow_percent: int | None,
    says: str,
) -> None:
    with pytest.raises(SpecError) as e:
        set_traffic(api, "models", "breast-cancer", weights, shadow_percent)
    assert says in e.value.message
    assert "SeldonDeployment models/breast-cancer" in e.value.message
    assert not [r for r in deployed.requests if r[0] == "PATCH"]


def test_a_mirror_percent_without_a_shadow_is_refused(
    deployed: FakeApiServer, api: DynamicClient
) -> None:
    deployed.objects[KEY]["spec"]["predictors"].pop()  # no shadow any more
    with pytest.raises(SpecError) as e:
        set_traffic(api, "models", "breast-cancer", {"stable": 50, "canary": 50}, 10)
    assert "there is no shadow predictor" in e.value.message


def test_a_concurrent_reorder_fails_the_patch_instead_of_moving_the_wrong_weight(
    deployed: FakeApiServer, api: DynamicClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.k8s.traffic as traffic

    real_get = traffic.get_sdep

    def read_then_someone_reorders(*args: object) -> dict:
        sdep = real_get(*args)  # type: ignore[arg-type]
        predictors = deployed.objects[KEY]["spec"]["predictors"]
        predictors[0], predictors[1] = predictors[1], predictors[0]
        return sdep

    monkeypatch.setattr(traffic, "get_sdep", read_then_someone_reorders)
    with pytest.raises(ClusterError) as e:
        set_traffic(api, "models", "breast-cancer", {"stable": 20, "canary": 80})
    assert "422" in e.value.message and "read and retry" in e.value.message
    assert {p["name"]: p["traffic"] for p in deployed.objects[KEY]["spec"]["predictors"]} == {
        "stable": 90,
        "canary": 10,
        "shadow": 100,
    }


def test_an_absent_deployment_is_reported(apiserver: FakeApiServer, api: DynamicClient) -> None:
    with pytest.raises(ClusterError) as e:
        get_traffic(api, "models", "breast-cancer")
    assert (
        "SeldonDeployment models/breast-cancer not found; deploy it with 'serving deploy'"
        in e.value.message
    )

"""The local router behaves like Seldon's Istio ingress: same URLs, split, pinning, stickiness,
mirroring (answers never reach callers), and it loses no request when replicas die or weights
change. Real MLServer processes behind the real router."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import httpx
import psutil
import pytest

from serving import dataset
from serving.client import GrpcClient, InferenceFailed, RestClient

from .conftest import Stack, infer_body, send_many

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def default_weights(stack: Stack) -> Iterator[None]:
    yield
    stack.wait_all_live()
    stack.set_weights({"stable": 90, "canary": 10}, mirror=100)


def within_3_sigma(observed: int, n: int, p: float) -> bool:
    return abs(observed - n * p) <= 3 * math.sqrt(n * p * (1 - p))


def test_split_follows_the_weights_within_three_sigma(stack: Stack) -> None:
    n = 3000
    results = send_many(stack.infer_url, n, concurrency=16)
    assert all(status == 200 for status, _, _ in results)
    served = Counter(predictor for _, predictor, _ in results)
    assert set(served) == {"stable", "canary"}
    assert within_3_sigma(served["canary"], n, 0.10), served


def test_every_response_names_its_predictor_and_model_version(stack: Stack) -> None:
    for status, predictor, body in send_many(stack.infer_url, 200):
        assert status == 200 and body is not None
        assert body["model_version"] == {"stable": "v1", "canary": "v2"}[predictor]


def test_pinning_header_picks_the_predictor(stack: Stack) -> None:
    results = send_many(stack.infer_url, 100, headers=stack.pin("canary"))
    assert {(s, p) for s, p, _ in results} == {(200, "canary")}


def test_pinning_an_unknown_predictor_is_a_404_naming_the_known_ones(stack: Stack) -> None:
    resp = httpx.post(stack.infer_url, json=infer_body(), headers=stack.pin("nope"))
    assert resp.status_code == 404
    assert "nope" in resp.text and "canary" in resp.text


def test_sticky_header_keeps_a_caller_on_one_predictor(stack: Stack) -> None:
    stack.set_weights({"stable": 50, "canary": 50})
    users = [f"user-{i}" for i in range(40)]
    results = send_many(stack.infer_url, 400, headers=lambda i: {"x-user-id": users[i % 40]})
    by_user: dict[str, set[str | None]] = {}
    for i, (status, predictor, _) in enumerate(results):
        assert status == 200
        by_user.setdefault(users[i % 40], set()).add(predictor)
    assert all(len(p) == 1 for p in by_user.values()), by_user
    # and different callers really are spread over both predictors
    assert {next(iter(p)) for p in by_user.values()} == {"stable", "canary"}


def test_shadow_gets_its_share_and_callers_never_see_its_answer(stack: Stack) -> None:
    stack.set_weights({"stable": 90, "canary": 10}, mirror=50)
    before = settled_shadow_counts(stack)
    n = 1000
    results = send_many(stack.infer_url, n, concurrency=8)
    assert all(s == 200 and p in {"stable", "canary"} for s, p, _ in results)
    # the shadow serves v4; no caller ever got a v4 answer
    assert {body["model_version"] for _, _, body in results if body} <= {"v1", "v2"}
    mirrored = settled_shadow_counts(stack) - before
    assert within_3_sigma(mirrored, n, 0.5), mirrored


def settled_shadow_counts(stack: Stack, timeout: float = 30) -> int:
    """Mirrored requests counted so far (sent or dropped), once the count stops moving: nginx
    hands mirrored pairs over every batch interval (0.5 s in the tests' stacks), and the shadow
    worker runs in the idle CPU class and reports every 100 ms, so on a busy machine its counts
    lag the callers' requests. Sampled every second, so a hand-over always falls between two
    samples."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        shadow = stack.status()["shadow"]
        count = shadow["sent"] + shadow["dropped"]
        if count == last and shadow["inFlight"] == 0:
            return count
        last = count
        time.sleep(1.0)
    raise AssertionError(f"shadow counts still moving after {timeout}s")


def test_shadow_answers_are_compared_with_the_primary(stack: Stack) -> None:
    before = stack.status()["shadow"]["agreement"]["rowsCompared"]
    send_many(stack.infer_url, 200)
    settled_shadow_counts(stack)
    agreement = stack.status()["shadow"]["agreement"]
    assert agreement["rowsCompared"] - before >= 200
    # v4 always predicts the majority class: it agrees with stable only on those rows
    assert 0.4 < agreement["agreementRate"] < 0.9
    assert agreement["recentDisagreements"]
    assert "primary" in agreement["recentDisagreements"][0]["detail"]
    metrics = httpx.get(stack.state["restUrl"] + "/metrics").text
    assert 'seldon_shadow_rows_total{deployment_name="breast-cancer",predictor_name="shadow",' \
           'result="disagreed"}' in metrics
    assert "seldon_shadow_agreement_ratio" in metrics


def _load_in_background(stack: Stack, seconds: float, results: list[int]) -> threading.Thread:
    def run() -> None:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + seconds
            i = 0
            while time.monotonic() < deadline:
                try:
                    results.append(client.post(stack.infer_url, json=infer_body(i)).status_code)
                except httpx.HTTPError:
                    results.append(-1)
                i += 1

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_killing_the_shadow_mid_load_fails_no_primary_request(stack: Stack) -> None:
    results: list[int] = []
    threads = [_load_in_background(stack, 4.0, results) for _ in range(4)]
    time.sleep(1.0)
    failed_before = stack.status()["shadow"]["failed"]
    os.kill(stack.replica_pid("shadow"), signal.SIGKILL)
    for t in threads:
        t.join()
    assert len(results) > 100
    assert Counter(results) == {200: len(results)}
    status = stack.status()
    assert status["shadow"]["failed"] + status["shadow"]["dropped"] > failed_before
    stack.wait_all_live()  # and the supervisor brought it back
    assert next(p for p in stack.status()["predictors"] if p["name"] == "shadow")[
        "replicas"][0]["restarts"] >= 1


def test_killing_the_shadow_worker_mid_load_fails_no_primary_request(stack: Stack) -> None:
    results: list[int] = []
    threads = [_load_in_background(stack, 3.0, results) for _ in range(4)]
    time.sleep(0.5)
    before = stack.status()["shadow"]
    worker = before["worker"]
    os.kill(worker["pid"], signal.SIGKILL)
    for t in threads:
        t.join()
    assert len(results) > 100
    assert Counter(results) == {200: len(results)}
    # what nginx could not hand over while the worker was down is counted as dropped
    deadline = time.monotonic() + 5
    while stack.status()["shadow"]["dropped"] <= before["dropped"]:
        assert time.monotonic() < deadline, "hand-overs lost while the worker was down"
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while (restarted := stack.status()["shadow"]["worker"])["restarts"] < 1:
        assert time.monotonic() < deadline, "the shadow worker was not restarted"
        time.sleep(0.2)
    assert restarted["pid"] != worker["pid"]
    # and mirroring works again: new requests are compared
    compared = stack.status()["shadow"]["agreement"]["requestsCompared"]
    send_many(stack.infer_url, 100)
    deadline = time.monotonic() + 10
    while stack.status()["shadow"]["agreement"]["requestsCompared"] <= compared:
        assert time.monotonic() < deadline, "no comparison after the worker restarted"
        time.sleep(0.2)


def test_weight_changes_under_load_lose_no_request(stack: Stack) -> None:
    results: list[int] = []
    threads = [_load_in_background(stack, 3.0, results) for _ in range(4)]
    for i in range(12):
        canary = (i * 10) % 100
        stack.set_weights({"stable": 100 - canary, "canary": canary})
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert Counter(results) == {200: len(results)}
    stack.set_weights({"stable": 0, "canary": 100})
    assert {p for _, p, _ in send_many(stack.infer_url, 50)} == {"canary"}


def test_unreachable_replica_is_retried_on_another_replica(stack: Stack) -> None:
    os.kill(stack.replica_pid("stable", 0), signal.SIGKILL)
    time.sleep(0.1)
    results = send_many(stack.infer_url, 40, concurrency=1,
                        headers=stack.pin("stable"))
    assert {s for s, _, _ in results} == {200}


def test_unreachable_replica_is_retried_on_another_replica_over_grpc(stack: Stack) -> None:
    stack.wait_all_live()
    os.kill(stack.replica_pid("stable", 0), signal.SIGKILL)
    time.sleep(0.1)
    client = GrpcClient(stack.state["grpcTarget"],
                        metadata={"seldon": "breast-cancer", "namespace": "models",
                                  **stack.pin("stable")})
    served = [client.infer("breast-cancer", dataset.sample_rows(1, seed=i)).predictor
              for i in range(40)]
    assert served == ["stable"] * 40


def answered_by(pid: int) -> float:
    """Inference requests a replica has answered, from its own MLServer metrics (the one port
    of the process whose /metrics is Prometheus text: every prometheus_client has python_info)."""
    ports = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
             if c.status == psutil.CONN_LISTEN]
    for port in ports:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue  # the REST or gRPC port
        if "python_info" in text:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("model_infer_request_success_total"))
    raise AssertionError(f"no metrics port among {ports} of pid {pid}")


def stable_replicas_answering(stack: Stack, n: int, concurrency: int) -> list[float]:
    stack.wait_all_live()
    time.sleep(1.2)  # a replica refused earlier is kept out for 1 s
    pids = [stack.replica_pid("stable", i) for i in (0, 1)]
    before = [answered_by(pid) for pid in pids]
    results = send_many(stack.infer_url, n, concurrency=concurrency, headers=stack.pin("stable"))
    assert {s for s, _, _ in results} == {200}
    return [answered_by(pid) - b for pid, b in zip(pids, before, strict=True)]


def test_a_lone_caller_is_served_by_one_warm_replica(stack: Stack) -> None:
    # fewest requests in flight, ties to the first replica: one caller never spreads
    counts = stable_replicas_answering(stack, 60, concurrency=1)
    assert sorted(counts) == [0, 60], counts


def test_overlapping_callers_spread_over_the_replicas(stack: Stack) -> None:
    counts = stable_replicas_answering(stack, 240, concurrency=8)
    assert sum(counts) == 240 and min(counts) >= 240 * 0.2, counts


def test_predictor_without_live_replica_answers_503_with_a_clear_body(stack: Stack) -> None:
    os.kill(stack.replica_pid("canary"), signal.SIGKILL)
    time.sleep(0.1)
    resp = httpx.post(stack.infer_url, json=infer_body(), headers=stack.pin("canary"))
    assert resp.status_code == 503
    assert "canary" in resp.json()["error"] and "retry" in resp.json()["error"]
    # the rest of the deployment keeps serving
    assert httpx.post(stack.infer_url, json=infer_body(),
                      headers=stack.pin("stable")).status_code == 200


def test_oversized_body_gets_413(stack: Stack) -> None:
    rows = dataset.sample_rows(400)  # ~100 KB of JSON, above maxBodyBytes=64 KiB
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}
    resp = httpx.post(stack.infer_url, json=body)
    assert resp.status_code == 413
    assert "maxBodyBytes" in resp.text


def test_oversized_grpc_request_is_refused_with_the_limit_named(stack: Stack) -> None:
    client = GrpcClient(stack.state["grpcTarget"],
                        metadata={"seldon": "breast-cancer", "namespace": "models"})
    with pytest.raises(InferenceFailed, match="RESOURCE_EXHAUSTED.*maxBodyBytes"):
        client.infer("breast-cancer", dataset.sample_rows(400))  # ~96 KB, limit 64 KiB
    assert client.infer("breast-cancer", dataset.sample_rows(1)).predictor  # still serving


def test_malformed_requests_are_answered_like_mlserver(stack: Stack) -> None:
    resp = httpx.post(stack.infer_url, content=b"{not json",
                      headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    bad_shape = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 3],
                             "data": [1.0, 2.0, 3.0]}]}
    resp = httpx.post(stack.infer_url, json=bad_shape)
    assert resp.status_code == 400 and "shape" in resp.json()["error"], (resp.headers, resp.text)


def test_percent_encoded_paths_never_reshape_the_forwarded_request(stack: Stack) -> None:
    # decoded, %0D%0A would split the forwarded request and inject a header: the router matches
    # the decoded path against Seldon's routes and forwards only what it matched
    url = f"{stack.seldon_url}/v2/models/breast-cancer%0D%0AX-Evil:%201/infer"
    resp = httpx.post(url, json=infer_body())
    assert resp.status_code == 404, resp.text
    assert "no route" in resp.json()["error"]


def test_unknown_deployment_path_is_a_404(stack: Stack) -> None:
    url = stack.state["restUrl"] + "/seldon/other/breast-cancer/v2/models/breast-cancer/infer"
    resp = httpx.post(url, json=infer_body())
    assert resp.status_code == 404 and "models/breast-cancer" in resp.text


def test_v2_metadata_and_health_paths_work_under_the_prefix(stack: Stack) -> None:
    client = RestClient(stack.seldon_url)
    assert client.server_ready()  # Seldon's executor serves /v2/health/ready, not .../live
    assert client.model_ready("breast-cancer")
    assert client.metadata("breast-cancer")["inputs"][0]["name"] == "input-0"


def test_grpc_is_routed_by_seldon_metadata(stack: Stack) -> None:
    client = GrpcClient(stack.state["grpcTarget"],
                        metadata={"seldon": "breast-cancer", "namespace": "models"})
    served = Counter(client.infer("breast-cancer", dataset.sample_rows(1, seed=i)).predictor
                     for i in range(200))
    assert set(served) <= {"stable", "canary"} and served["stable"] > served["canary"]
    pinned = client.infer("breast-cancer", dataset.sample_rows(1),
                          metadata=stack.pin("canary"))
    assert pinned.predictor == "canary" and pinned.model_version == "v2"
    assert client.model_ready("breast-cancer")
    with pytest.raises(InferenceFailed, match="INVALID_ARGUMENT"):
        client.infer("breast-cancer", dataset.sample_rows(1)[:, :3])


def test_grpc_without_seldon_metadata_is_not_found_with_the_fix(stack: Stack) -> None:
    with pytest.raises(InferenceFailed, match="NOT_FOUND.*seldon=breast-cancer"):
        GrpcClient(stack.state["grpcTarget"]).infer("breast-cancer", dataset.sample_rows(1))


def test_admin_api_refuses_changes_without_the_token(stack: Stack) -> None:
    url = stack.state["restUrl"] + "/admin/traffic"
    body = {"weights": {"stable": 0, "canary": 100}}
    assert httpx.put(url, json=body).status_code == 401
    assert httpx.put(url, json=body, headers={"authorization": "Bearer wrong"}).status_code == 403
    assert stack.status()["routes"]["weights"] == {"stable": 90, "canary": 10}


@pytest.mark.parametrize("body, fragment", [
    ({"weights": {"stable": 50, "canary": 40}}, "sum to 100"),
    ({"weights": {"stable": 50, "nope": 50}}, "weights.nope"),
    ({"weights": {"stable": 120, "canary": -20}}, "0 to 100"),
    ({"weights": {"shadow": 10}}, "mirrorPercent"),
    ({"mirrorPercent": 101}, "mirrorPercent"),
    ({"weigths": {"stable": 100}}, "unknown keys"),
])
def test_admin_api_validates_changes_like_the_spec(stack: Stack, body: dict[str, object],
                                                     fragment: str) -> None:
    resp = stack.admin.put("/admin/traffic", json=body)
    assert resp.status_code == 400
    assert fragment in resp.json()["error"]
    assert stack.status()["routes"]["weights"] == {"stable": 90, "canary": 10}


def test_admin_api_replaces_predictors_without_a_gap(stack: Stack) -> None:
    results: list[int] = []
    threads = [_load_in_background(stack, 6.0, results) for _ in range(2)]
    predictors = [
        {"name": "stable", "version": "v1", "traffic": 80, "replicas": 2},
        {"name": "canary", "version": "v3", "traffic": 20},
        {"name": "shadow", "version": "v4", "shadow": True, "traffic": 100},
    ]
    resp = stack.admin.put("/admin/predictors", json={"predictors": predictors})
    for t in threads:
        t.join()
    assert resp.status_code == 200, resp.text
    assert Counter(results) == {200: len(results)}
    canary = [b for s, p, b in send_many(stack.infer_url, 60,
                                         headers=stack.pin("canary"))]
    assert {b["model_version"] for b in canary if b} == {"v3"}
    # put the original canary back for the other tests
    predictors[1] = {"name": "canary", "version": "v2", "traffic": 10}
    predictors[0]["traffic"] = 90
    assert stack.admin.put("/admin/predictors", json={"predictors": predictors}).status_code == 200


def test_metrics_use_the_seldon_executor_names_and_labels(stack: Stack) -> None:
    send_many(stack.infer_url, 20)
    text = httpx.get(stack.state["restUrl"] + "/metrics").text
    assert "seldon_api_executor_server_requests_seconds_bucket{" in text
    line = next(ln for ln in text.splitlines()
                if ln.startswith("seldon_api_executor_server_requests_seconds_count{")
                and 'predictor_name="stable"' in ln)
    for label in ("deployment_name", "predictor_name", "predictor_version", "service",
                  "method", "code"):
        assert f'{label}="' in line


def test_status_command_prints_predictors_weights_and_agreement(stack: Stack) -> None:
    from click.testing import CliRunner

    from serving.cli import main

    result = CliRunner().invoke(main, ["status", "--state-dir", str(stack.state_dir)])
    assert result.exit_code == 0, result.output
    for fragment in ("stable", "canary", "mirror 100%", "agreement", "90%"):
        assert fragment in result.output


def test_grpc_status_codes_pass_through_unchanged(stack: Stack) -> None:
    channel = grpc.insecure_channel(stack.state["grpcTarget"])
    method = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")
    from mlserver.grpc import dataplane_pb2 as pb

    with pytest.raises(grpc.RpcError) as err:
        method(pb.ModelReadyRequest(name="no-such-model").SerializeToString(),
               metadata=[("seldon", "breast-cancer"), ("namespace", "models")])
    # MLServer itself answers UNKNOWN for this; the router must not rewrite it
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert "Model no-such-model" in (err.value.details() or "")

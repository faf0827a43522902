"""The router serves exactly what Seldon Core v1.18.2's executor serves for protocol v2, and
nothing a caller sends without a credential changes routing or what is counted against a model.
Real MLServer processes behind the real router (the `stack` fixture)."""

from __future__ import annotations

import asyncio
import random
import socket
import string
import time
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

from serving import dataset
from serving.client import GrpcClient, InferenceFailed

from .conftest import Stack, infer_body, send_many

pytestmark = pytest.mark.slow
SELDON_METADATA = (("seldon", "breast-cancer"), ("namespace", "models"))


def raw_http(stack: Stack, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (httpx would encode them) and read the status and body."""
    url = urlsplit(stack.state["restUrl"])
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_every_route_of_the_executor_is_served(stack: Stack) -> None:
    base = stack.seldon_url
    assert httpx.post(f"{base}/v2/models/breast-cancer/infer", json=infer_body()).status_code == 200
    # the model-less infer route goes to the graph's model, as the executor does
    resp = httpx.post(f"{base}/v2/models/infer", json=infer_body())
    assert resp.status_code == 200 and resp.json()["model_name"] == "breast-cancer"
    assert httpx.get(f"{base}/v2/models/breast-cancer/ready").status_code == 200
    assert httpx.get(f"{base}/v2/models/breast-cancer").json()["name"] == "breast-cancer"
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    assert httpx.get(f"{base}/v2/docs/dataplane.json").status_code == 200
    assert httpx.get(f"{base}/live").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 200
    assert "seldon_api_executor_server_requests_seconds" in httpx.get(f"{base}/prometheus").text


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/repository/models/breast-cancer/unload"),
    ("POST", "/v2/repository/models/breast-cancer/load"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/models/breast-cancer/versions/v1/infer"),
    ("GET", "/v2/models/breast-cancer/versions/v1"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2"),
    ("GET", "/metrics"),
])
def test_routes_the_executor_does_not_serve_are_a_404_naming_what_is(
        stack: Stack, method: str, path: str) -> None:
    resp = httpx.request(method, stack.seldon_url + path, json={})
    assert resp.status_code == 404, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert path in error and "POST /v2/models/<model>/infer" in error


def test_unload_through_the_router_leaves_every_replica_serving(stack: Stack) -> None:
    for _ in range(3):
        httpx.post(stack.seldon_url + "/v2/repository/models/breast-cancer/unload")
    results = send_many(stack.infer_url, 60)
    assert {s for s, _, _ in results} == {200}
    assert httpx.get(stack.seldon_url + "/v2/models/breast-cancer/ready").status_code == 200


def test_a_served_path_with_the_wrong_method_is_a_405_naming_the_method(stack: Stack) -> None:
    resp = httpx.get(stack.infer_url)
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert "use POST" in resp.json()["error"]
    resp = httpx.delete(stack.seldon_url + "/v2/models/breast-cancer")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET"


def test_grpc_serves_only_the_executors_three_methods(stack: Stack) -> None:
    channel = grpc.insecure_channel(stack.state["grpcTarget"])
    stub = GRPCInferenceServiceStub(channel)
    for call, request in [(stub.RepositoryModelUnload,
                           pb.RepositoryModelUnloadRequest(model_name="breast-cancer")),
                          (stub.RepositoryIndex, pb.RepositoryIndexRequest()),
                          (stub.ServerLive, pb.ServerLiveRequest()),
                          (stub.ServerMetadata, pb.ServerMetadataRequest())]:
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=SELDON_METADATA, timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "ModelInfer, ModelReady and ModelMetadata" in (failed.value.details() or "")
    client = GrpcClient(stack.state["grpcTarget"], metadata=dict(SELDON_METADATA))
    assert client.model_ready("breast-cancer")
    assert client.metadata("breast-cancer")["name"] == "breast-cancer"
    assert client.infer("breast-cancer", dataset.sample_rows(1)).predictor in {"stable", "canary"}
    channel.close()


def test_errors_nginx_makes_itself_are_json(stack: Stack) -> None:
    status, body = raw_http(stack, b"GARBAGE\r\n\r\n")
    assert status == 400 and b'"error"' in body
    big_header = b"x-big: " + b"a" * 20000 + b"\r\n"
    status, body = raw_http(stack, b"GET /seldon/models/breast-cancer/ready HTTP/1.1\r\n"
                                   b"host: x\r\nconnection: close\r\n" + big_header + b"\r\n")
    assert status == 400 and b"above 8 KB" in body
    status, body = raw_http(stack, b"GET /seldon/models/breast-cancer/" + b"a" * 20000 +
                            b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert status in (400, 414) and b'"error"' in body


def test_random_methods_and_paths_do_not_grow_the_metrics(stack: Stack) -> None:
    metrics_url = stack.state["restUrl"] + "/metrics"
    # earlier tests' mirrored requests may still add their series: start from settled metrics
    before, deadline = -1, time.monotonic() + 15
    while before != len(httpx.get(metrics_url).content) and time.monotonic() < deadline:
        before = len(httpx.get(metrics_url).content)
        time.sleep(1.0)
    rng = random.Random(3)
    with httpx.Client(timeout=10) as client:
        for i in range(3000):
            method = "".join(rng.choices(string.ascii_uppercase, k=8))
            path = ["/v2/models/breast-cancer/infer", f"/v2/x{i}", "/v2/health/ready"][i % 3]
            client.request(method, stack.seldon_url + path)
    time.sleep(0.5)  # metrics lines reach the control process every 100 ms
    text = httpx.get(metrics_url).text
    assert len(text) < before + 4096, len(text) - before
    started = time.perf_counter()
    httpx.get(stack.state["restUrl"] + "/admin/status")
    assert time.perf_counter() - started < 0.2


def test_pinning_needs_the_pin_token(stack: Stack) -> None:
    resp = httpx.post(stack.infer_url, json=infer_body(), headers={"x-seldon-predictor": "canary"})
    assert resp.status_code == 403 and "x-serving-pin-token" in resp.json()["error"]
    resp = httpx.post(stack.infer_url, json=infer_body(),
                      headers={"x-seldon-predictor": "canary", "x-serving-pin-token": "guess"})
    assert resp.status_code == 403
    resp = httpx.post(stack.infer_url, json=infer_body(), headers=stack.pin("canary"))
    assert resp.status_code == 200 and resp.headers["x-seldon-predictor"] == "canary"
    client = GrpcClient(stack.state["grpcTarget"], metadata=dict(SELDON_METADATA))
    with pytest.raises(InferenceFailed, match="PERMISSION_DENIED"):
        client.infer("breast-cancer", dataset.sample_rows(1),
                     metadata={"x-seldon-predictor": "canary"})


def test_the_shadow_cannot_be_pinned_even_with_the_token(stack: Stack) -> None:
    resp = httpx.post(stack.infer_url, json=infer_body(), headers=stack.pin("shadow"))
    assert resp.status_code == 403 and "allowShadowPin" in resp.json()["error"]


def test_malformed_requests_are_the_callers_errors_not_the_predictors(stack: Stack) -> None:
    before = stack.status()["requests"].get("canary", {}).get("errors", 0)
    bad = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30],
                       "data": [1.0] * 29}]}
    for _ in range(20):
        resp = httpx.post(stack.infer_url, json=bad, headers=stack.pin("canary"))
        assert 400 <= resp.status_code < 500, resp.text
    time.sleep(0.5)
    assert stack.status()["requests"]["canary"]["errors"] == before


def test_every_mirrored_request_with_odd_bytes_in_its_query_is_compared_or_counted(
        stack: Stack) -> None:
    def accounted() -> int:
        # sent to the shadow, or dropped before it; events_lost counts requests that were sent
        # and then lost their comparison (the comparator did not take the events): not twice
        shadow = stack.status()["shadow"]
        lost_after_sending = int(shadow["droppedBy"].get("events_lost", 0))
        return int(shadow["sent"]) + int(shadow["dropped"]) - lost_after_sending

    worker_pid = stack.status()["shadow"]["worker"]["pid"]
    # earlier tests' mirrored requests may still be on their way: start from a settled count
    before, deadline = -1, time.monotonic() + 15
    while before != accounted() and time.monotonic() < deadline:
        before = accounted()
        time.sleep(1.0)
    body = httpx.Request("POST", "http://x", json=infer_body()).read()
    n = 20
    for _ in range(n):
        status, _ = raw_http(stack, b"POST /seldon/models/breast-cancer/v2/models/breast-cancer/"
                             b"infer?x=\xff\xfe%ff HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                             b"content-type: application/json\r\ncontent-length: " +
                             str(len(body)).encode() + b"\r\n\r\n" + body)
        assert status == 200
    deadline = time.monotonic() + 15
    while accounted() < before + n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert accounted() == before + n
    assert stack.status()["shadow"]["worker"]["pid"] == worker_pid


def test_wrong_admin_tokens_are_answered_slowly_one_at_a_time_the_right_one_at_once(
        stack: Stack) -> None:
    url = stack.state["restUrl"] + "/admin/traffic"
    body = {"weights": {"stable": 90, "canary": 10}}

    async def guesses(n: int) -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=60) as client:
            async def guess(i: int) -> tuple[int, float]:
                resp = await client.put(url, json=body,
                                        headers={"authorization": f"Bearer guess{i}"})
                return resp.status_code, time.monotonic()
            return await asyncio.gather(*(guess(i) for i in range(n)))

    started = time.monotonic()
    results = asyncio.run(guesses(12))
    refused = sorted(t - started for code, t in results if code == 403)
    # serialised, a second each: 12 guesses cannot be answered in under ~8 s, and the ones past
    # the waiting limit get 429 at once
    assert len(refused) >= 8 and refused[-1] >= 0.9 * len(refused)
    assert {code for code, _ in results} <= {403, 429}
    t0 = time.monotonic()
    assert stack.admin.put("/admin/traffic", json=body).status_code == 200
    assert time.monotonic() - t0 < 0.9

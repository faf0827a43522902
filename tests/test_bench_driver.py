"""The load driver counts requests and errors correctly (short runs; no timing assertions)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import (
    GRPCInferenceServiceServicer,
    add_GRPCInferenceServiceServicer_to_server,
)

from serving import dataset
from serving.bench.driver import (
    LoadResult,
    Target,
    pooled_cpu_us,
    pooled_percentile,
    run_load,
)
from serving.server import MLServerProcess, free_port

from .conftest import MODEL

DURATION_S = 1.0
WARMUP_S = 0.2


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return dataset.sample_rows(64, seed=5)


def targets(server: MLServerProcess, model: str) -> list[Target]:
    return [Target.rest(server.rest_url, model), Target.grpc(server.grpc_target, model)]


def assert_consistent(result: LoadResult) -> None:
    assert result.requests >= result.errors >= 0
    assert result.errors == sum(result.error_kinds.values())
    assert result.rps == pytest.approx(result.ok / DURATION_S)
    assert result.cpu_s["driver"] >= 0


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_counts_successful_single_row_requests(
    mlserver_v1: MLServerProcess, rows: np.ndarray, protocol: str
) -> None:
    target = targets(mlserver_v1, MODEL)[protocol == "grpc"]
    result = run_load(target, concurrency=2, duration_s=DURATION_S, warmup_s=WARMUP_S, rows=rows)
    assert_consistent(result)
    assert result.requests > 10
    assert result.errors == 0, result.error_samples
    assert result.error_samples == [] and result.error_kinds == {}
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.protocol == protocol and result.concurrency == 2


@pytest.mark.parametrize("protocol, kind", [("rest", "HTTP 404"), ("grpc", "NOT_FOUND")])
def test_wrong_model_name_counts_errors_not_crashes(
    mlserver_v1: MLServerProcess, rows: np.ndarray, protocol: str, kind: str
) -> None:
    target = targets(mlserver_v1, "no-such-model")[protocol == "grpc"]
    result = run_load(target, concurrency=3, duration_s=DURATION_S, warmup_s=WARMUP_S, rows=rows)
    assert_consistent(result)
    assert result.requests > 0
    assert result.errors == result.requests
    assert result.error_kinds == {kind: result.requests}
    assert result.rps == 0 and math.isnan(result.p50_ms) and math.isnan(result.p99_ms)
    assert len(result.error_samples) == 1 and "no-such-model" in result.error_samples[0]


@pytest.mark.parametrize("protocol, kind", [("rest", "connection"), ("grpc", "UNAVAILABLE")])
def test_nothing_listening_counts_errors_and_stops_on_time(
    rows: np.ndarray, protocol: str, kind: str
) -> None:
    port = free_port()
    target = (
        Target.rest(f"http://127.0.0.1:{port}", MODEL)
        if protocol == "rest"
        else Target.grpc(f"127.0.0.1:{port}", MODEL, timeout_s=2.0)
    )
    result = run_load(target, concurrency=2, duration_s=DURATION_S, warmup_s=WARMUP_S, rows=rows)
    assert_consistent(result)
    assert result.requests > 0 and result.errors == result.requests
    assert set(result.error_kinds) == {kind}


# --- what reaches a target behind a prefix (the router case): a fake REST and gRPC server ---


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.paths: set[str] = set()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[dict[str, Any]] = []


@pytest.fixture
def fake_rest() -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like MLServer

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with seen.lock:
                seen.paths.add(self.path)
                if len(seen.bodies) < 5:
                    seen.bodies.append(json.loads(body))
                    seen.headers.append({k.lower(): v for k, v in self.headers.items()})
            reply = b'{"model_name": "breast-cancer", "outputs": []}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def fake_grpc() -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    class Servicer(GRPCInferenceServiceServicer):
        def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC name
            with seen.lock:
                seen.paths.add(request.model_name)
                if len(seen.headers) < 5:
                    seen.headers.append(dict(context.invocation_metadata()))
                    seen.bodies.append({"shape": list(request.inputs[0].shape)})
            return pb.ModelInferResponse(model_name=request.model_name)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", seen
    server.stop(grace=None).wait(5)


def test_rest_target_keeps_its_path_prefix_and_headers(
    fake_rest: tuple[str, Seen], rows: np.ndarray
) -> None:
    base, seen = fake_rest
    target = Target.rest(
        f"{base}/seldon/models/breast-cancer/", MODEL, headers={"x-seldon-test": "yes"}
    )
    result = run_load(target, concurrency=2, duration_s=DURATION_S, warmup_s=WARMUP_S, rows=rows)
    assert_consistent(result)
    assert result.requests > 0 and result.errors == 0
    assert seen.paths == {"/seldon/models/breast-cancer/v2/models/breast-cancer/infer"}
    assert all(h["x-seldon-test"] == "yes" for h in seen.headers)
    assert all(h["content-type"] == "application/json" for h in seen.headers)
    assert all(b["inputs"][0]["shape"] == [1, 30] for b in seen.bodies)


def test_grpc_target_sends_its_metadata(fake_grpc: tuple[str, Seen], rows: np.ndarray) -> None:
    address, seen = fake_grpc
    metadata = {"seldon": "breast-cancer", "namespace": "models"}
    target = Target.grpc(address, MODEL, metadata=metadata)
    result = run_load(target, concurrency=2, duration_s=DURATION_S, warmup_s=WARMUP_S, rows=rows)
    assert_consistent(result)
    assert result.requests > 0 and result.errors == 0
    assert seen.paths == {MODEL}
    assert all(h.items() >= metadata.items() for h in seen.headers)
    assert all(b["shape"] == [1, 30] for b in seen.bodies)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Target.rest("http://10.20.30.40:8080", MODEL),
        lambda: Target.grpc("192.0.2.1:8081", MODEL),
        lambda: Target.grpc("127.0.0.1", MODEL),  # no port
        lambda: Target.rest("127.0.0.1:8080", MODEL),  # no scheme
        lambda: Target.grpc("127.0.0.1:8081", MODEL, metadata={"Seldon": "x"}),
    ],
)
def test_refuses_targets_it_must_not_load(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def _result(latencies_ms: list[float], cpu_s: float) -> LoadResult:
    return LoadResult("t", "rest", 1, 1.0, requests=len(latencies_ms), errors=0,
                      rps=len(latencies_ms), p50_ms=math.nan, p99_ms=math.nan, mean_ms=math.nan,
                      cpu_s={"router": cpu_s}, latencies_ms=np.asarray(latencies_ms))


def test_runs_are_pooled_before_taking_percentiles() -> None:
    runs = [_result([1.0] * 99 + [50.0], 0.001), _result([2.0] * 100, 0.003)]
    # the median of the runs' own p99s would hide the one slow request; the pooled p99 does not
    assert pooled_percentile(runs, 50) == 2.0  # 99 of 1 ms, 100 of 2 ms, one of 50 ms
    assert 2.0 <= pooled_percentile(runs, 99) < 50.0
    assert pooled_percentile(runs, 100) == 50.0
    assert pooled_cpu_us(runs, "router") == 20.0  # 4 ms over 200 requests
    assert math.isnan(pooled_percentile([_result([], 0.0)], 99))

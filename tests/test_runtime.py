"""The runtime serves our artifacts over V2 REST and gRPC, and refuses what it cannot trust."""

from __future__ import annotations

from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from serving import artifacts, dataset
from serving.client import GrpcClient, InferenceFailed, RestClient
from serving.errors import ChecksumMismatch, LibraryVersionMismatch, ServingError
from serving.server import MLServerProcess, ServerSettings

from .conftest import MODEL, free_ports


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return dataset.sample_rows(25, seed=3)


def test_rest_and_grpc_predict_like_the_in_process_model(
    mlserver_v1: MLServerProcess, models_root: Path, rows: np.ndarray
) -> None:
    local = joblib.load(models_root / MODEL / "v1" / "model.joblib")
    rest = RestClient(mlserver_v1.rest_url).infer(MODEL, rows)
    grpc_ = GrpcClient(mlserver_v1.grpc_target).infer(MODEL, rows)
    np.testing.assert_array_equal(rest.labels, local.predict(rows))
    np.testing.assert_array_equal(grpc_.labels, local.predict(rows))
    np.testing.assert_allclose(rest.probabilities, local.predict_proba(rows))
    np.testing.assert_allclose(grpc_.probabilities, local.predict_proba(rows))
    assert rest.model_version == grpc_.model_version == "v1"


def test_metadata_names_inputs_and_outputs_over_both_protocols(
    mlserver_v1: MLServerProcess,
) -> None:
    for client in (RestClient(mlserver_v1.rest_url), GrpcClient(mlserver_v1.grpc_target)):
        meta = client.metadata(MODEL)
        assert meta["inputs"][0]["name"] == "input-0"
        assert list(meta["inputs"][0]["shape"]) == [-1, 30]
        assert {o["name"] for o in meta["outputs"]} == {"predict", "predict_proba"}
        assert client.model_ready(MODEL)
        assert client.server_live() and client.server_ready()


def test_explicit_output_request_returns_only_that_output(mlserver_v1: MLServerProcess) -> None:
    body = {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP64",
                "shape": [1, 30],
                "data": dataset.sample_rows(1).ravel().tolist(),
            }
        ],
        "outputs": [{"name": "predict"}],
    }
    resp = httpx.post(f"{mlserver_v1.rest_url}/v2/models/{MODEL}/infer", json=body)
    assert resp.status_code == 200
    assert [o["name"] for o in resp.json()["outputs"]] == ["predict"]


BAD_REQUESTS = {
    "wrong shape": (
        {
            "inputs": [
                {"name": "input-0", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
            ]
        },
        400,
        "shape [n, 30]",
    ),
    "wrong datatype": (
        {
            "inputs": [
                {"name": "input-0", "datatype": "BYTES", "shape": [1, 30], "data": ["a"] * 30}
            ]
        },
        400,
        "datatype is BYTES",
    ),
    "data does not fill shape": (
        {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 30], "data": [1.0] * 30}]},
        400,
        "could not decode",
    ),
    "no inputs": ({"inputs": []}, 400, "got 0 tensors"),
    "unknown output": (
        {
            "inputs": [
                {"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": [1.0] * 30}
            ],
            "outputs": [{"name": "explain"}],
        },
        400,
        "explain",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(
    mlserver_v1: MLServerProcess, case: str
) -> None:
    body, status, fragment = BAD_REQUESTS[case]
    resp = httpx.post(f"{mlserver_v1.rest_url}/v2/models/{MODEL}/infer", json=body)
    assert resp.status_code == status
    assert fragment in resp.text
    assert RestClient(mlserver_v1.rest_url).infer(MODEL, dataset.sample_rows(1)).labels.size == 1


def test_malformed_json_is_a_4xx(mlserver_v1: MLServerProcess) -> None:
    resp = httpx.post(
        f"{mlserver_v1.rest_url}/v2/models/{MODEL}/infer",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert 400 <= resp.status_code < 500
    assert "JSON" in resp.text


def test_unknown_model_is_a_404_over_rest_and_not_found_over_grpc(
    mlserver_v1: MLServerProcess,
) -> None:
    with pytest.raises(InferenceFailed, match="404"):
        RestClient(mlserver_v1.rest_url).infer("no-such-model", dataset.sample_rows(1))
    with pytest.raises(InferenceFailed, match="NOT_FOUND"):
        GrpcClient(mlserver_v1.grpc_target).infer("no-such-model", dataset.sample_rows(1))


def test_grpc_wrong_shape_is_invalid_argument(mlserver_v1: MLServerProcess) -> None:
    with pytest.raises(InferenceFailed, match="INVALID_ARGUMENT.*shape"):
        GrpcClient(mlserver_v1.grpc_target).infer(MODEL, dataset.sample_rows(2)[:, :5])


def test_verify_refuses_a_tampered_artifact_naming_file_and_both_hashes(
    tampered_copy: Path,
) -> None:
    recorded = artifacts.read_metadata(tampered_copy).artifact.sha256
    with pytest.raises(ChecksumMismatch) as err:
        artifacts.verify(tampered_copy)
    message = err.value.message
    assert str(tampered_copy / "model.joblib") in message
    assert recorded in message
    assert artifacts.sha256_file(tampered_copy / "model.joblib") in message


def test_verify_refuses_an_artifact_from_another_scikit_learn(
    tampered_copy: Path, models_root: Path
) -> None:
    (tampered_copy / "model.joblib").write_bytes(
        (models_root / MODEL / "v1" / "model.joblib").read_bytes()
    )
    meta = artifacts.read_metadata(tampered_copy)
    meta.libraries["scikit-learn"] = "0.0.1"
    artifacts.write_json(tampered_copy / "metadata.json", meta.model_dump(mode="json"))
    with pytest.raises(LibraryVersionMismatch, match="scikit-learn 0.0.1"):
        artifacts.verify(tampered_copy)


def test_mlserver_refuses_to_start_on_a_tampered_artifact(
    tampered_copy: Path, tmp_path: Path
) -> None:
    # MLServer 1.7 shuts down when a model fails to load at start-up; the log says why.
    log = tmp_path / "mlserver.log"
    server = MLServerProcess(tampered_copy, ServerSettings.tuned(**free_ports()), log_path=log)
    with server, pytest.raises(ServingError, match="exited"):
        server.wait_ready([MODEL])
    text = log.read_text()
    recorded = artifacts.read_metadata(tampered_copy).artifact.sha256
    assert f"refusing to load {tampered_copy / 'model.joblib'}" in text
    assert recorded in text and artifacts.sha256_file(tampered_copy / "model.joblib") in text

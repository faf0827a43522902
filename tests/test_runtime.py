"""The runtime serves our artifacts over V2 REST and gRPC, and refuses what it cannot trust."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from serving import artifacts, dataset
from serving.client import GrpcClient, InferenceFailed, RestClient
from serving.errors import ArtifactError, ChecksumMismatch, LibraryVersionMismatch, ServingError
from serving.server import MLServerProcess

from .conftest import MODEL, TRAINED_DIGESTS, tuned


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
        "inputs[0].data holds 30 numbers but inputs[0].shape [2, 30] needs 60",
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


def test_grpc_raw_contents_that_do_not_match_shape_and_datatype_are_invalid_argument(
    mlserver_v1: MLServerProcess,
) -> None:
    # MLServer's converter unpacked these with struct before any runtime code: INTERNAL before
    import grpc
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

    row = dataset.sample_rows(1)
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64",
                                                      shape=[1, 30])],
        raw_input_contents=[row[:, :29].astype("<f8").tobytes()],
    )
    with grpc.insecure_channel(mlserver_v1.grpc_target) as channel, pytest.raises(
        grpc.RpcError
    ) as err:
        GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0] holds 232 bytes but inputs[0].shape [1, 30] of FP64 needs 240" \
        in (err.value.details() or "")


def test_verify_refuses_an_artifact_whose_digest_is_not_the_specs_naming_file_both_hashes_and_fix(
    tampered_copy: Path,
) -> None:
    expected = TRAINED_DIGESTS["v1"]
    with pytest.raises(artifacts.DigestMismatch) as err:
        artifacts.verify(tampered_copy, expected)
    message = err.value.message
    assert str(tampered_copy / "model.joblib") in message
    assert expected in message
    assert artifacts.sha256_file(tampered_copy / "model.joblib") in message
    assert "model.artifacts.v1" in message and "SERVING_ARTIFACT_DIGESTS" in message


def test_verify_still_checks_metadata_json_second(tampered_copy: Path, models_root: Path) -> None:
    (tampered_copy / "model.joblib").write_bytes(
        (models_root / MODEL / "v1" / "model.joblib").read_bytes()
    )
    meta = artifacts.read_metadata(tampered_copy)
    meta.artifact.sha256 = "0" * 64
    artifacts.write_json(tampered_copy / "metadata.json", meta.model_dump(mode="json"))
    with pytest.raises(ChecksumMismatch, match="metadata.json records 0000"):
        artifacts.verify(tampered_copy, TRAINED_DIGESTS["v1"])


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
        artifacts.verify(tampered_copy, TRAINED_DIGESTS["v1"])


def refused_at_start(model_dir: Path, log: Path, **env: str) -> str:
    """MLServer 1.7 shuts down when a model fails to load at start-up: its log says why."""
    server = MLServerProcess(model_dir, tuned(), extra_env=env, log_path=log)
    with server, pytest.raises(ServingError, match="exited"):
        server.wait_ready([MODEL])
    return log.read_text()


def test_mlserver_refuses_to_start_on_a_tampered_artifact(
    tampered_copy: Path, tmp_path: Path
) -> None:
    text = refused_at_start(tampered_copy, tmp_path / "mlserver.log")
    assert f"refusing to load {tampered_copy / 'model.joblib'}" in text
    assert TRAINED_DIGESTS["v1"] in text
    assert artifacts.sha256_file(tampered_copy / "model.joblib") in text


def test_mlserver_refuses_a_repickled_model_whose_metadata_json_matches_it(
    repickled_copy: Path, tmp_path: Path
) -> None:
    # Whoever can write models/ rewrites metadata.json too: only the spec's digest catches it.
    artifacts.verify(repickled_copy, artifacts.read_metadata(repickled_copy).artifact.sha256)
    text = refused_at_start(repickled_copy, tmp_path / "mlserver.log")
    assert f"refusing to load {repickled_copy / 'model.joblib'}" in text
    assert f"the deployment spec expects {TRAINED_DIGESTS['v1']} for version v1" in text
    assert "Loaded model" not in text


@pytest.mark.parametrize("env", [{"SERVING_ARTIFACT_DIGESTS": ""},
                                 {"SERVING_ARTIFACT_DIGESTS": f"v2={'a' * 64}"}])
def test_mlserver_refuses_an_artifact_the_spec_names_no_digest_for(
    models_root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    text = refused_at_start(models_root / MODEL / "v1", tmp_path / "mlserver.log", **env)
    assert "no expected sha256 for version v1" in text
    assert "model.artifacts.v1" in text and "SERVING_ARTIFACT_DIGESTS" in text


def two_versions(models_root: Path, tmp_path: Path) -> Path:
    for version in ("v1", "v2"):
        shutil.copytree(models_root / MODEL / version, tmp_path / MODEL / version)
    return tmp_path / MODEL


def point_uri(version_dir: Path, uri: str) -> None:
    settings_file = version_dir / "model-settings.json"
    settings = json.loads(settings_file.read_text())
    settings["parameters"]["uri"] = uri
    settings_file.write_text(json.dumps(settings))


@pytest.mark.parametrize("where", ["sibling", "absolute", "symlink"])
def test_an_artifact_outside_the_version_folder_is_refused(
    models_root: Path, tmp_path: Path, where: str
) -> None:
    root = two_versions(models_root, tmp_path)
    v1 = root / "v1"
    if where == "sibling":
        point_uri(v1, "../v2/model.joblib")
    elif where == "absolute":
        outside = tmp_path / "elsewhere.joblib"
        shutil.copy(root / "v2" / "model.joblib", outside)
        point_uri(v1, str(outside))
    else:
        (v1 / "model.joblib").unlink()
        (v1 / "model.joblib").symlink_to(root / "v2" / "model.joblib")
    with pytest.raises(artifacts.OutsideVersionFolder, match="outside the version's own folder"):
        artifacts.check_settings(v1)
    # The runtime refuses it even when the digest it is given is the other file's: what it
    # serves under v1's label must be v1's folder's.
    text = refused_at_start(
        v1, tmp_path / "mlserver.log", SERVING_ARTIFACT_DIGESTS=f"v1={TRAINED_DIGESTS['v2']}"
    )
    assert "parameters.uri" in text and "outside the version's own folder" in text


def test_the_runtime_never_lets_mlservers_adaptive_batching_merge_requests() -> None:
    from mlserver.settings import ModelParameters, ModelSettings

    from serving.runtime import VerifiedSKLearnModel, _take_over_batching

    settings = ModelSettings(name=MODEL, implementation=VerifiedSKLearnModel, max_batch_size=32,
                             max_batch_time=0.001, parameters=ModelParameters(version="v1"))
    assert _take_over_batching(settings) == (32, 0.001)
    assert (settings.max_batch_size, settings.max_batch_time) == (0, 0.0)  # MLServer's: off
    # the inference worker gets these settings and batches the same way
    worker_copy = ModelSettings.model_validate_json(settings.model_dump_json(by_alias=True))
    assert _take_over_batching(worker_copy) == (32, 0.001)


def test_a_batch_that_fails_is_answered_request_by_request() -> None:
    import asyncio

    from serving.runtime import RowBatcher

    def compute(rows: np.ndarray, outputs: object) -> dict[str, np.ndarray]:
        if (rows < 0).any():
            raise ValueError(f"negative in {len(rows)} rows")
        return {"predict": rows[:, 0] * 2}

    async def run() -> list[object]:
        batcher = RowBatcher(compute, max_size=8, max_time=0.01)
        requests = [np.full((2, 3), float(i)) for i in range(5)] + [np.full((1, 3), -1.0)]
        return await asyncio.gather(*(batcher.submit(r, ["predict"]) for r in requests),
                                    return_exceptions=True)

    results = asyncio.run(run())
    for i, result in enumerate(results[:5]):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["predict"], [2.0 * i, 2.0 * i])
    assert isinstance(results[5], ValueError) and "in 1 rows" in str(results[5])


def test_batching_stays_off_for_a_model_whose_answer_for_a_row_depends_on_the_others(
    models_root: Path,
) -> None:
    from serving.compiled import OnnxPredictor, SklearnPredictor
    from serving.runtime import VerifiedSKLearnModel

    class AboveTheBatchMean:
        def predict(self, rows: np.ndarray) -> np.ndarray:
            return (rows[:, 0] > rows[:, 0].mean()).astype(np.int64)

    runtime = VerifiedSKLearnModel.__new__(VerifiedSKLearnModel)
    runtime._predictor = SklearnPredictor(AboveTheBatchMean())
    runtime._n_features, runtime._outputs = 3, ("predict",)
    assert not runtime._answers_rows_independently()
    runtime._predictor = SklearnPredictor(joblib.load(models_root / MODEL / "v1" / "model.joblib"))
    runtime._n_features, runtime._outputs = 30, ("predict", "predict_proba")
    assert runtime._answers_rows_independently()
    runtime._predictor = OnnxPredictor(models_root / MODEL / "v2" / "model.onnx", "FP32")
    assert runtime._answers_rows_independently()


def test_a_version_folder_holding_anything_else_is_refused(
    models_root: Path, tmp_path: Path
) -> None:
    # MLServer imports the runtime with the model's folder first on sys.path (and keeps its
    # repository folder there): a module in it would run as code, so the folder must be clean.
    v1 = tmp_path / MODEL / "v1"
    shutil.copytree(models_root / MODEL / "v1", v1)
    (v1 / "joblib.py").write_text("raise SystemExit('not ours')\n")
    with pytest.raises(ArtifactError, match="it holds joblib.py besides"):
        artifacts.version_dir(tmp_path, MODEL, "v1")  # what serving up and serve start from
    (v1 / "joblib.py").unlink()
    (v1 / "notes.txt").write_text("harmless, but not ours\n")
    text = refused_at_start(v1, tmp_path / "mlserver.log")
    assert "it holds notes.txt besides model.joblib" in text

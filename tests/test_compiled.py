"""Compiled versions: proven at training time to answer like scikit-learn, bound by the spec's
digests, served by the runtime when present and verified, scikit-learn otherwise (and it says)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from serving import artifacts, compiled, dataset
from serving.client import GrpcClient, RestClient
from serving.errors import ChecksumMismatch
from serving.server import MLServerProcess

from .conftest import MODEL, TRAINED_DIGESTS, start_mlserver, tampered_version, tuned
from .test_runtime import refused_at_start


@pytest.fixture(scope="module")
def all_rows() -> np.ndarray:
    data = dataset.load()
    return np.vstack([data.x_train, data.x_test])


def test_training_compiles_the_linear_and_tree_versions_with_their_proof(
    models_root: Path,
) -> None:
    metas = {m.version: m for m in artifacts.list_versions(models_root)}
    for version, input_type in {"v1": "FP64", "v2": "FP32", "v3": "FP32"}.items():
        record = metas[version].compiled
        assert record is not None and record.reason is None, version
        assert record.file == "model.onnx" and record.input_type == input_type
        onnx = models_root / MODEL / version / "model.onnx"
        assert record.sha256 == artifacts.sha256_file(onnx) and record.bytes == onnx.stat().st_size
        assert record.proof.rows["dataset"] == 569
        assert record.proof.rows["perturbed"] == compiled.PERTURBED_ROWS
        assert record.proof.max_proba_difference is not None
        assert record.proof.max_proba_difference <= record.proof.proba_tolerance == 1e-5
        assert set(record.libraries) == {"skl2onnx", "onnx", "onnxruntime"}
    for version in ("v2", "v3"):  # trees: also rows on their split thresholds
        assert metas[version].compiled.proof.rows["boundary"] == compiled.BOUNDARY_ROWS  # type: ignore[union-attr]


def test_a_version_that_cannot_be_compiled_has_no_onnx_file_and_says_why(
    models_root: Path,
) -> None:
    record = artifacts.read_metadata(models_root / MODEL / "v4").compiled
    assert record is not None and record.file is None and record.sha256 is None
    assert record.reason and record.reason.startswith("not compiled: ")
    assert "DummyClassifier" in record.reason
    assert not (models_root / MODEL / "v4" / "model.onnx").exists()


def test_the_proof_refuses_a_conversion_whose_probabilities_drift(
    models_root: Path, all_rows: np.ndarray
) -> None:
    # The forest converted for float64 rows: labels agree here, but its trees compare in float64
    # where scikit-learn's compare float32 rows, so some trees answer otherwise on dataset rows.
    forest = joblib.load(models_root / MODEL / "v2" / "model.joblib")
    fp64 = compiled.OnnxPredictor(compiled.convert(forest, 30, "FP64"), "FP64")
    reason = compiled.prove(forest, fp64, compiled.proof_rows(forest, all_rows))
    assert reason is not None and reason.startswith("probabilities differ from scikit-learn's")
    assert "tolerance 1e-05" in reason


def test_the_proof_refuses_a_compiled_model_whose_labels_differ(
    models_root: Path, all_rows: np.ndarray
) -> None:
    forest = joblib.load(models_root / MODEL / "v2" / "model.joblib")
    boosting = joblib.load(models_root / MODEL / "v3" / "model.joblib")
    other = compiled.OnnxPredictor(compiled.convert(boosting, 30, "FP32"), "FP32")
    reason = compiled.prove(forest, other, compiled.proof_rows(forest, all_rows))
    assert reason is not None and reason.startswith("labels differ from scikit-learn's on ")
    assert "of 569 dataset rows" in reason


def test_load_verified_predictor_is_compiled_when_the_spec_binds_it_else_scikit_learn(
    models_root: Path,
) -> None:
    rows = dataset.sample_rows(40, seed=5)
    meta, forest = artifacts.load_verified_predictor(models_root / MODEL / "v2", TRAINED_DIGESTS)
    assert forest.kind == "onnxruntime" and meta.version == "v2"
    reference = joblib.load(models_root / MODEL / "v2" / "model.joblib")
    np.testing.assert_array_equal(forest.predict(rows), reference.predict(rows))
    np.testing.assert_allclose(forest.predict_proba(rows), reference.predict_proba(rows),
                               atol=1e-5)
    without = {k: d for k, d in TRAINED_DIGESTS.items() if k != "v2/model.onnx"}
    _, fallback = artifacts.load_verified_predictor(models_root / MODEL / "v2", without)
    assert fallback.kind == "scikit-learn"
    assert "the spec names no digest for it (model.artifacts.v2/model.onnx" in fallback.reason
    _, dummy = artifacts.load_verified_predictor(models_root / MODEL / "v4", TRAINED_DIGESTS)
    assert dummy.kind == "scikit-learn" and dummy.reason.startswith("not compiled: ")


@pytest.fixture
def tampered_onnx(models_root: Path, tmp_path: Path) -> Path:
    return tampered_version(models_root, tmp_path, "v2", "model.onnx")


def test_a_changed_onnx_file_is_refused_in_process_and_by_mlserver(
    tampered_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(artifacts.DigestMismatch, match="v2/model.onnx"):
        artifacts.load_verified_predictor(tampered_onnx, TRAINED_DIGESTS)
    # a spec that records the changed file still meets metadata.json's own digest
    changed = {**TRAINED_DIGESTS,
               "v2/model.onnx": artifacts.sha256_file(tampered_onnx / "model.onnx")}
    with pytest.raises(ChecksumMismatch):
        artifacts.load_verified_predictor(tampered_onnx, changed)
    text = refused_at_start(tampered_onnx, tmp_path / "mlserver.log")
    assert f"refusing to load {tampered_onnx / 'model.onnx'}" in text
    assert TRAINED_DIGESTS["v2/model.onnx"] in text


@pytest.fixture(scope="module")
def three_versions(
    models_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServerProcess]:
    """One MLServer: v2 compiled and bound, v3 compiled but its model.onnx digest left out of
    the spec, v4 not compiled."""
    root = tmp_path_factory.mktemp("three") / MODEL
    for version in ("v2", "v3", "v4"):
        shutil.copytree(models_root / MODEL / version, root / version)
    digests = {k: d for k, d in TRAINED_DIGESTS.items() if k != "v3/model.onnx"}
    server = start_mlserver(root.parent, tmp_path_factory.mktemp("logs"),
                            tuned(artifact_digests=digests))
    yield server
    server.stop()


@pytest.mark.parametrize("version,kind", [("v2", "onnxruntime"), ("v3", "scikit-learn"),
                                          ("v4", "scikit-learn")])
def test_mlserver_says_over_rest_and_grpc_which_predictor_serves_and_answers_alike(
    three_versions: MLServerProcess, models_root: Path, version: str, kind: str
) -> None:
    for client in (RestClient(three_versions.rest_url), GrpcClient(three_versions.grpc_target)):
        parameters = client.metadata(MODEL, version)["parameters"]
        assert parameters["serving_predictor"] == kind
    served_by = RestClient(three_versions.rest_url).metadata(MODEL, version)["parameters"][
        "serving_served_by"]
    if version == "v3":
        assert "the spec names no digest for it" in served_by
    rows = dataset.sample_rows(30, seed=8)
    answer = RestClient(three_versions.rest_url).infer(MODEL, rows, version=version)
    reference = joblib.load(models_root / MODEL / version / "model.joblib")
    np.testing.assert_array_equal(answer.labels, reference.predict(rows))
    np.testing.assert_allclose(answer.probabilities, reference.predict_proba(rows), atol=1e-5)
    log = three_versions.recent_log()
    assert f"breast-cancer {version} is served by {kind}" in log
    # batching pays only for scikit-learn's forest (ms a row), not for compiled models (us)
    batched = "batching 32 requests / 1 ms, of checked rows"
    line = next(ln for ln in log.splitlines() if f"loaded breast-cancer {version} " in ln)
    assert (batched in line) == (version == "v3"), line
    if version == "v2":
        assert "batching off: one row takes" in line and "with onnxruntime" in line


def test_a_compiled_float32_model_refuses_values_beyond_float32_like_scikit_learn(
    three_versions: MLServerProcess,
) -> None:
    row = dataset.sample_rows(1).ravel().tolist()
    row[3] = 1e300
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": row}]}
    for version in ("v2", "v3"):  # compiled, scikit-learn
        resp = httpx.post(f"{three_versions.rest_url}/v2/models/{MODEL}/versions/{version}/infer",
                          json=body)
        assert resp.status_code == 400, (version, resp.text)
        assert "the model refused these values" in resp.text and "float32" in resp.text

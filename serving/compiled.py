"""Compiled model versions: the same model converted to ONNX (skl2onnx) and run by ONNX Runtime,
used only when proven to answer like scikit-learn.

The proof runs at training time, on the ONNX bytes that are written:
- labels equal scikit-learn's on every row of the dataset (train and hold-out);
- labels equal on PERTURBED_ROWS seeded rows: dataset rows with noise on every feature;
- for tree models, labels equal on BOUNDARY_ROWS seeded rows that put one feature exactly on a
  split threshold of the model or on its neighbouring floats, where a float32 / float64
  difference would flip a comparison;
- every class probability within PROBA_TOLERANCE (absolute) of scikit-learn's on all those rows.
The input type is tried as FP64 first, then FP32 (what scikit-learn's trees cast rows to); the
first conversion that passes is kept. A model that fails (or that skl2onnx cannot convert) is not
compiled and metadata.json says why; the runtime then serves it with scikit-learn.

Predictors (scikit-learn or compiled) answer `answer(rows, outputs)` for the runtime and offer
predict / predict_proba for in-process callers; `kind` says which one it is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .artifacts import COMPILED_FILE, CompiledRecord, ProofRecord

PERTURBED_ROWS = 10_000
BOUNDARY_ROWS = 4_000
PROBA_TOLERANCE = 1e-5
PROOF_SEED = 13
INPUT_NAME = "input"
INPUT_TYPES = ("FP64", "FP32")
COMPILER_LIBRARIES = ("skl2onnx", "onnx", "onnxruntime")
PREDICT, PREDICT_PROBA = "predict", "predict_proba"


class Predictor(Protocol):
    kind: str
    """'scikit-learn' or 'onnxruntime'."""
    reason: str | None

    def answer(self, rows: np.ndarray, outputs: Sequence[str]) -> dict[str, Any]:
        ...

    def predict(self, rows: np.ndarray) -> np.ndarray:
        ...

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        ...


class SklearnPredictor:
    kind = "scikit-learn"
    reason: str | None = None
    """Why the compiled form does not serve, when known."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def answer(self, rows: np.ndarray, outputs: Sequence[str]) -> dict[str, Any]:
        return {name: getattr(self.estimator, name)(rows) for name in outputs}

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(rows))

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(rows))


class OnnxPredictor:
    """One ONNX Runtime session, single-threaded (the server runs one request at a time per
    process on a small machine; a thread pool would only compete with the event loop)."""

    kind = "onnxruntime"
    reason: str | None = None

    def __init__(self, model: bytes | Path, input_type: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._dtype = np.float64 if input_type == "FP64" else np.float32
        self._names = [o.name for o in self._session.get_outputs()]  # label, probabilities

    def _run(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        typed = np.ascontiguousarray(rows, dtype=self._dtype)
        if self._dtype is np.float32 and not np.isfinite(typed).all():
            # scikit-learn's trees refuse these the same way (they cast to float32 too)
            raise ValueError("Input X contains infinity or a value too large for "
                             "dtype('float32').")
        label, proba = self._session.run(self._names, {INPUT_NAME: typed})
        return label, proba.astype(np.float64, copy=False)

    def answer(self, rows: np.ndarray, outputs: Sequence[str]) -> dict[str, Any]:
        label, proba = self._run(rows)
        both = {PREDICT: label, PREDICT_PROBA: proba}
        return {name: both[name] for name in outputs}

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self._run(rows)[0]

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self._run(rows)[1]


def compiler_versions() -> dict[str, str]:
    return {name: installed_version(name) for name in COMPILER_LIBRARIES}


@dataclass(frozen=True)
class Compiled:
    onnx: bytes | None
    """The proven ONNX model, or None when the version is not compiled."""
    record: CompiledRecord


def convert(estimator: Any, n_features: int, input_type: str) -> bytes:
    """ONNX bytes for `estimator`, deterministic: same model, same bytes."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    tensor = DoubleTensorType if input_type == "FP64" else FloatTensorType
    final = estimator.steps[-1][-1] if hasattr(estimator, "steps") else estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, tensor([None, n_features]))],
            name="model",  # else a random uuid: the bytes must be the same every run
            options={id(final): {"zipmap": False}},  # labels + a probability tensor
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    # skl2onnx lists the opsets in set order, which differs between runs: sort them
    imports = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in imports:
        onx.opset_import.add(domain=domain, version=version)
    return bytes(onx.SerializeToString())


def split_thresholds(estimator: Any) -> list[tuple[int, float]]:
    """(feature, threshold) of every split of a tree model's trees; [] for other models."""
    final = estimator.steps[-1][-1] if hasattr(estimator, "steps") else estimator
    trees = [final] if hasattr(final, "tree_") else list(
        np.ravel(getattr(final, "estimators_", np.array([]))))
    splits: list[tuple[int, float]] = []
    for tree in trees:
        structure = getattr(tree, "tree_", None)
        if structure is None:
            continue
        inner = structure.feature >= 0
        splits += zip(structure.feature[inner].tolist(), structure.threshold[inner].tolist(),
                      strict=True)
    return splits


def proof_rows(estimator: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """The rows the proof compares on, by kind: the dataset, perturbed rows, boundary rows."""
    rng = np.random.default_rng(PROOF_SEED)
    base = x[rng.integers(0, len(x), PERTURBED_ROWS)]
    scale = x.std(axis=0)
    perturbed = base * rng.normal(1.0, 0.1, base.shape) + rng.normal(0.0, 0.1, base.shape) * scale
    rows = {"dataset": x, "perturbed": perturbed}
    splits = split_thresholds(estimator)
    if splits:
        boundary = x[rng.integers(0, len(x), BOUNDARY_ROWS)].copy()
        for i, k in enumerate(rng.integers(0, len(splits), BOUNDARY_ROWS)):
            feature, threshold = splits[k]
            boundary[i, feature] = (threshold, np.nextafter(threshold, -np.inf),
                                    np.nextafter(threshold, np.inf),
                                    float(np.float32(threshold)))[i % 4]
        rows["boundary"] = boundary
    return rows


def prove(estimator: Any, predictor: Predictor, rows: dict[str, np.ndarray]) -> str | None:
    """None when `predictor` answers like `estimator` on every row set, else why not."""
    for kind, x in rows.items():
        labels, proba = predictor.predict(x), predictor.predict_proba(x)
        expected = estimator.predict(x)
        differ = int(np.count_nonzero(labels != expected))
        if labels.shape != expected.shape or differ:
            return f"labels differ from scikit-learn's on {differ} of {len(x)} {kind} rows"
        gap = float(np.abs(proba - estimator.predict_proba(x)).max())
        if not gap <= PROBA_TOLERANCE:
            return (f"probabilities differ from scikit-learn's by up to {gap:.3g} on {kind} rows "
                    f"(tolerance {PROBA_TOLERANCE:g})")
    return None


def compile_version(estimator: Any, x: np.ndarray) -> Compiled:
    """Convert and prove; the first input type that passes wins (see the module's doc)."""
    rows = proof_rows(estimator, x)
    counts = {kind: len(r) for kind, r in rows.items()}
    reasons = []
    for input_type in INPUT_TYPES:
        try:
            onnx_bytes = convert(estimator, x.shape[1], input_type)
            predictor = OnnxPredictor(onnx_bytes, input_type)
            reason = prove(estimator, predictor, rows)
        except Exception as e:  # noqa: BLE001 - a model skl2onnx/onnxruntime cannot take
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if reason is None:
            gap = max(float(np.abs(predictor.predict_proba(r) - estimator.predict_proba(r)).max())
                      for r in rows.values())
            proof = ProofRecord(rows=counts, seed=PROOF_SEED, proba_tolerance=PROBA_TOLERANCE,
                                max_proba_difference=gap)
            return Compiled(onnx_bytes, CompiledRecord(
                file=COMPILED_FILE, input_type=input_type, libraries=compiler_versions(),
                proof=proof))
        reasons.append(f"{input_type}: {reason}")
    return Compiled(None, CompiledRecord(
        libraries=compiler_versions(), reason="not compiled: " + "; ".join(reasons),
        proof=ProofRecord(rows=counts, seed=PROOF_SEED, proba_tolerance=PROBA_TOLERANCE)))

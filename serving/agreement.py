"""Compare a shadow's answer with the primary's, row by row: the one comparison both the local
stack and the cluster use (the comparator, serving/comparator/, runs it for both).

Classifiers are compared on their labels (the `predict` output) exactly; numeric outputs of other
models (regressors) within a relative tolerance. Probabilities of two different classifiers always
differ a little, so they are not what "agreement" means.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from mlserver.grpc import dataplane_pb2 as pb

from . import datatypes

LABEL_OUTPUT = "predict"
EXACT_TYPES = datatypes.EXACT


# Decoding stays cheap on purpose (it runs for every mirrored request): plain json / protobuf
# fields into numpy, without building MLServer's pydantic response types.
NUMPY_TYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
               "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
               "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
PB_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
               "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
               "UINT16": "uint_contents", "UINT32": "uint_contents",
               "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


def _array(values: Any, datatype: str, shape: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=NUMPY_TYPES.get(datatype, object)).reshape(shape)


def outputs_from_rest(body: bytes) -> dict[str, tuple[str, np.ndarray]]:
    return {o["name"]: (o["datatype"], _array(o["data"], o["datatype"], o["shape"]))
            for o in orjson.loads(body)["outputs"]}


def grpc_values(tensor: Any, raw_contents: Sequence[bytes], index: int) -> Any:
    """A gRPC tensor's flat values: from the message's raw contents when it has them (as
    MLServer sends them), else from the tensor's typed contents field. KeyError: a datatype
    without numbers."""
    if raw_contents:
        return np.frombuffer(raw_contents[index], dtype=NUMPY_TYPES[tensor.datatype])
    # list() first: numpy reads a protobuf repeated field item by item, at twice the cost
    return list(getattr(tensor.contents, PB_CONTENTS[tensor.datatype]))


def outputs_from_grpc(body: bytes) -> dict[str, tuple[str, np.ndarray]]:
    message = pb.ModelInferResponse.FromString(body)
    return {o.name: (o.datatype, _array(grpc_values(o, message.raw_output_contents, i),
                                        o.datatype, list(o.shape)))
            for i, o in enumerate(message.outputs)}


def inputs_from_rest(body: bytes) -> dict[str, tuple[str, np.ndarray]]:
    """A V2 REST request's inputs (what the input row of a disagreement is read from)."""
    return {t["name"]: (t["datatype"], _array(t["data"], t["datatype"], t["shape"]))
            for t in orjson.loads(body)["inputs"]}


def inputs_from_grpc(body: bytes) -> dict[str, tuple[str, np.ndarray]]:
    message = pb.ModelInferRequest.FromString(body)
    return {t.name: (t.datatype, _array(grpc_values(t, message.raw_input_contents, i),
                                        t.datatype, list(t.shape)))
            for i, t in enumerate(message.inputs)}


def rest_response(model: str, outputs: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """Outputs as a V2 REST response body (the shadow worker's events carry split batch
    answers in this form)."""
    return orjson.dumps({"model_name": model, "outputs": [
        {"name": name, "datatype": dt, "shape": list(arr.shape), "data": arr.reshape(-1)}
        for name, (dt, arr) in outputs.items()]}, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class Comparison:
    rows: int
    agreed: int
    detail: str = ""
    first_disagreement: int | None = None
    """The first row the two answers differ on (None: they agree, or could not be compared
    row by row)."""


def compare(
    primary: dict[str, tuple[str, np.ndarray]],
    shadow: dict[str, tuple[str, np.ndarray]],
    rtol: float,
) -> Comparison:
    if (
        LABEL_OUTPUT in primary
        and LABEL_OUTPUT in shadow
        and primary[LABEL_OUTPUT][0] in EXACT_TYPES
    ):
        a = primary[LABEL_OUTPUT][1].reshape(len(primary[LABEL_OUTPUT][1]), -1)
        b = shadow[LABEL_OUTPUT][1].reshape(len(shadow[LABEL_OUTPUT][1]), -1)
        if a.shape != b.shape:
            return Comparison(len(a), 0, f"label shapes differ: {a.shape} vs {b.shape}")
        same = np.all(a == b, axis=1)
    else:
        names = sorted(set(primary) & set(shadow))
        if not names:
            return Comparison(1, 0, f"no common outputs: {sorted(primary)} vs {sorted(shadow)}")
        rows = len(primary[names[0]][1])
        same = np.ones(rows, dtype=bool)
        for name in names:
            a = primary[name][1].reshape(rows, -1)
            b = shadow[name][1].reshape(len(shadow[name][1]), -1)
            if a.shape != b.shape:
                return Comparison(rows, 0, f"{name} shapes differ: {a.shape} vs {b.shape}")
            if primary[name][0] in EXACT_TYPES:
                same &= np.all(a == b, axis=1)
            else:
                same &= np.all(np.isclose(a, b, rtol=rtol, atol=1e-9), axis=1)
    agreed = int(same.sum())
    detail = ""
    if agreed < len(same):
        first = int(np.argmin(same))
        detail = f"row {first}: primary {_row(primary, first)} vs shadow {_row(shadow, first)}"
        return Comparison(len(same), agreed, detail, first)
    return Comparison(len(same), agreed, detail)


def row(outputs: dict[str, tuple[str, np.ndarray]], i: int) -> dict[str, Any]:
    """Row `i` of every tensor, as plain JSON values."""
    return _row(outputs, i)


def _row(outputs: dict[str, tuple[str, np.ndarray]], i: int) -> dict[str, Any]:
    return {name: np.asarray(arr[i]).tolist() for name, (_, arr) in sorted(outputs.items())}


@dataclass
class AgreementStats:
    """Running agreement between the shadow and the primary, with a few recent disagreements."""

    requests_compared: int = 0
    rows_compared: int = 0
    rows_agreed: int = 0
    recent_disagreements: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))

    @property
    def rate(self) -> float | None:
        return self.rows_agreed / self.rows_compared if self.rows_compared else None

    def add_counts(self, requests: int, rows: int, agreed: int) -> None:
        self.requests_compared += requests
        self.rows_compared += rows
        self.rows_agreed += agreed

    def example(self, primary_predictor: str, detail: str) -> None:
        self.recent_disagreements.append({"primary": primary_predictor, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {
            "requestsCompared": self.requests_compared,
            "rowsCompared": self.rows_compared,
            "rowsAgreed": self.rows_agreed,
            "agreementRate": self.rate,
            "recentDisagreements": list(self.recent_disagreements),
        }

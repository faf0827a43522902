"""Batching mirrored requests: many callers' rows, one inference on the shadow.

The shadow's answers are only compared, never returned, so they need not come one by one. Mirrored
requests that look alike (same protocol, path, model, input names, datatypes and row shape, no
parameters) are joined along the first axis into one request; the answer is split back by rows
and each part compared with the primary's answer to its own request. On 2 cores this is what lets
a shadow mirror 100% of the traffic: one single-row inference costs MLServer about 0.7-1.2 ms of
CPU, a 16-row one barely more, and every millisecond the shadow spends is taken from the primary
on a busy machine (README, "What the router costs").

Requests that do not fit (parameters, strings, unreadable) are mirrored alone, as they came.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from mlserver.grpc import dataplane_pb2 as pb

from .. import datatypes
from .compare import NUMPY_TYPES, PB_CONTENTS, _array

Tensors = list[tuple[str, str, np.ndarray]]  # (name, datatype, array with rows first)
# What must match for requests to share a batch: kind, path, model, version, and per input
# (name, datatype, shape after the first axis).
BatchKey = tuple[Any, ...]


@dataclass(frozen=True)
class Inputs:
    key: BatchKey
    tensors: Tensors
    rows: int


def _key(kind: str, path: str, model: str, version: str, tensors: Tensors) -> BatchKey:
    return (kind, path, model, version,
            tuple((name, dt, arr.shape[1:]) for name, dt, arr in tensors))


def _batchable(tensors: Tensors) -> int | None:
    """Rows, when every input is numeric with the same number of rows; else None."""
    if not tensors:
        return None
    rows = {arr.shape[0] if arr.ndim else -1 for _, _, arr in tensors}
    if len(rows) != 1 or -1 in rows:
        return None
    if any(dt not in datatypes.NUMERIC and dt != "BOOL" for _, dt, _ in tensors):
        return None
    return rows.pop()


def rest_inputs(path: str, body: bytes) -> Inputs | None:
    """A REST V2 request's inputs, when it can share a batch."""
    try:
        request = json.loads(body)
        if set(request) - {"inputs", "id"}:  # parameters, outputs wanted: mirrored alone
            return None
        tensors = []
        for t in request["inputs"]:
            if set(t) - {"name", "datatype", "shape", "data"}:
                return None
            tensors.append((t["name"], t["datatype"],
                            _array(t["data"], t["datatype"], t["shape"])))
    except (ValueError, KeyError, TypeError):
        return None
    rows = _batchable(tensors)
    if rows is None:
        return None
    return Inputs(_key("rest", path, "", "", tensors), tensors, rows)


def grpc_inputs(method: str, message: bytes) -> Inputs | None:
    """A gRPC ModelInferRequest's inputs, when it can share a batch."""
    try:
        request = pb.ModelInferRequest.FromString(message)
    except Exception:
        return None
    if request.parameters or request.outputs:
        return None
    tensors = []
    for i, t in enumerate(request.inputs):
        if t.parameters or t.datatype not in NUMPY_TYPES:
            return None
        shape = list(t.shape)
        if request.raw_input_contents:
            values: Any = np.frombuffer(request.raw_input_contents[i],
                                        dtype=NUMPY_TYPES[t.datatype])
        else:
            values = getattr(t.contents, PB_CONTENTS.get(t.datatype, ""), None)
            if values is None:
                return None
        try:
            tensors.append((t.name, t.datatype, _array(values, t.datatype, shape)))
        except ValueError:
            return None
    rows = _batchable(tensors)
    if rows is None:
        return None
    key = _key("grpc", method, request.model_name, request.model_version, tensors)
    return Inputs(key, tensors, rows)


def join(parts: list[Inputs]) -> Tensors:
    """The inputs of several requests as one request's, rows in order."""
    first = parts[0].tensors
    return [(name, dt, np.concatenate([p.tensors[i][2] for p in parts]))
            for i, (name, dt, _) in enumerate(first)]


def rest_body(tensors: Tensors) -> bytes:
    return json.dumps({"inputs": [
        {"name": name, "datatype": dt, "shape": list(arr.shape), "data": arr.ravel().tolist()}
        for name, dt, arr in tensors]}).encode()


def grpc_message(key: BatchKey, tensors: Tensors) -> bytes:
    _, _, model, version, _ = key
    request = pb.ModelInferRequest(
        model_name=model, model_version=version,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype=dt,
                                                      shape=list(arr.shape))
                for name, dt, arr in tensors],
        raw_input_contents=[np.ascontiguousarray(arr, dtype=NUMPY_TYPES[dt]).tobytes()
                            for _, dt, arr in tensors])
    return bytes(request.SerializeToString())


def split(outputs: dict[str, tuple[str, np.ndarray]], rows: list[int]
          ) -> list[dict[str, tuple[str, np.ndarray]]]:
    """A batched answer back into one answer per request (outputs have rows first)."""
    total = sum(rows)
    for name, (_, arr) in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise ValueError(f"output {name!r} has shape {arr.shape}, expected {total} rows")
    answers = []
    start = 0
    for n in rows:
        answers.append({name: (dt, arr[start:start + n]) for name, (dt, arr) in outputs.items()})
        start += n
    return answers

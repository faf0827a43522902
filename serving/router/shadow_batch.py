"""Batching mirrored requests: many callers' rows, one inference on the shadow.

The shadow's answers are only compared, never returned, so they need not come one by one. Mirrored
requests that look alike (same protocol, path, model, input names, datatypes and row shape, no
parameters) are joined along the first axis into one request; the answer is split back by rows
and each part compared with the primary's answer to its own request. On 2 cores this is what lets
a shadow mirror 100% of the traffic: one single-row inference costs MLServer about 0.7-1.2 ms of
CPU, a 16-row one barely more, and every millisecond the shadow spends is taken from the primary
on a busy machine (README, "What the router costs").

Requests that do not fit (strings, uneven rows, unreadable) are mirrored alone, as they came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from mlserver.grpc import dataplane_pb2 as pb

from .. import datatypes
from ..agreement import NUMPY_TYPES, _array, grpc_values

Tensors = list[tuple[str, str, np.ndarray]]  # (name, datatype, array with rows first)
Decoded = dict[str, tuple[str, np.ndarray]]  # an answer's outputs by name: (datatype, array)
# What must match for requests to share a batch: everything but the rows (protocol, path, and the
# request without its tensor data and first dimensions, serialised).
BatchKey = tuple[str, str, bytes]


@dataclass(frozen=True)
class Inputs:
    key: BatchKey
    template: Any
    """The request without its data: a JSON dict (REST) or a ModelInferRequest (gRPC)."""
    tensors: Tensors
    rows: int


def _rows(tensors: Tensors) -> int | None:
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
        request = orjson.loads(body)
        request.pop("id", None)
        tensors = []
        for t in request["inputs"]:
            tensors.append((t["name"], t["datatype"],
                            _array(t.pop("data"), t["datatype"], t["shape"])))
            t["shape"] = t["shape"][1:]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        return None
    rows = _rows(tensors)
    if rows is None:
        return None
    key = ("rest", path, orjson.dumps(request, option=orjson.OPT_SORT_KEYS))
    return Inputs(key, request, tensors, rows)


def grpc_inputs(method: str, message: bytes) -> Inputs | None:
    """A gRPC ModelInferRequest's inputs, when it can share a batch."""
    try:
        request = pb.ModelInferRequest.FromString(message)
    except Exception:
        return None
    tensors = []
    for i, t in enumerate(request.inputs):
        if t.datatype not in NUMPY_TYPES:
            return None
        try:
            values = grpc_values(t, request.raw_input_contents, i)
            tensors.append((t.name, t.datatype, _array(values, t.datatype, list(t.shape))))
        except (KeyError, ValueError):
            return None
    rows = _rows(tensors)
    if rows is None:
        return None
    template = pb.ModelInferRequest()
    template.CopyFrom(request)
    template.ClearField("id")
    template.ClearField("raw_input_contents")
    for t in template.inputs:
        t.ClearField("contents")
        t.shape[0] = 0
    key = ("grpc", method, template.SerializeToString(deterministic=True))
    return Inputs(key, template, tensors, rows)


def join(parts: list[Inputs]) -> Tensors:
    """The inputs of several requests as one request's, rows in order."""
    first = parts[0].tensors
    return [(name, dt, np.concatenate([p.tensors[i][2] for p in parts]))
            for i, (name, dt, _) in enumerate(first)]


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def grpc_template_from_rest(path: str, template: dict[str, Any]) -> pb.ModelInferRequest:
    """The gRPC form of a REST request template: a batch goes to the shadow over gRPC, whatever
    protocol its callers used, with raw tensor contents (MLServer reads those with np.frombuffer;
    parsing JSON numbers cost it more than the inference)."""
    parts = path.strip("/").split("/")  # v2/models/<model>[/versions/<version>]/infer
    model = parts[2] if len(parts) > 2 else ""
    version = parts[4] if len(parts) > 5 and parts[3] == "versions" else ""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for key, value in (template.get("parameters") or {}).items():
        request.parameters[key].CopyFrom(_parameter(value))
    for spec in template["inputs"]:
        tensor = request.inputs.add(name=spec["name"], datatype=spec["datatype"])
        for key, value in (spec.get("parameters") or {}).items():
            tensor.parameters[key].CopyFrom(_parameter(value))
    for out in template.get("outputs") or []:
        request.outputs.add(name=out["name"])
    return request


def grpc_message(template: pb.ModelInferRequest, tensors: Tensors) -> bytes:
    request = pb.ModelInferRequest()
    request.CopyFrom(template)
    for t, (_, _, arr) in zip(request.inputs, tensors, strict=True):
        del t.shape[:]
        t.shape.extend(arr.shape)
    request.raw_input_contents.extend(
        np.ascontiguousarray(arr, dtype=NUMPY_TYPES[dt]).tobytes() for _, dt, arr in tensors)
    return bytes(request.SerializeToString())


def split(outputs: Decoded, rows: list[int]) -> list[Decoded]:
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


def concat(answers: list[Decoded]) -> Decoded:
    """Several answers as one (rows in order), to compare them in one go."""
    if len(answers) == 1:
        return answers[0]
    names = set(answers[0]).intersection(*answers[1:])
    return {name: (answers[0][name][0], np.concatenate([a[name][1] for a in answers]))
            for name in names}

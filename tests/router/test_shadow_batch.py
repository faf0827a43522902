"""Batching mirrored requests: alike requests join into one, answers split back by rows."""

from __future__ import annotations

import json

import numpy as np
from mlserver.grpc import converters
from mlserver.grpc import dataplane_pb2 as pb

from serving.client import build_request
from serving.dataset import sample_rows
from serving.router.shadow_batch import (
    grpc_inputs,
    grpc_message,
    grpc_template_from_rest,
    join,
    rest_inputs,
    split,
)

PATH = "/v2/models/breast-cancer/infer"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
ROWS = sample_rows(5, seed=3)


def rest_request(rows: np.ndarray) -> bytes:
    return build_request(rows).model_dump_json(exclude_none=True).encode()


def grpc_request(rows: np.ndarray) -> bytes:
    message = converters.ModelInferRequestConverter.from_types(build_request(rows),
                                                               model_name="breast-cancer")
    return bytes(message.SerializeToString())


def test_rest_requests_as_mlserver_clients_send_them_join_into_one_grpc_request() -> None:
    parts = [rest_inputs(PATH, rest_request(ROWS[i:i + n])) for i, n in ((0, 1), (1, 2))]
    assert all(p is not None for p in parts)
    assert parts[0].key == parts[1].key  # type: ignore[union-attr]
    template = grpc_template_from_rest(PATH, parts[0].template)  # type: ignore[union-attr]
    message = pb.ModelInferRequest.FromString(grpc_message(template, join(parts)))  # type: ignore[arg-type]
    assert message.model_name == "breast-cancer"
    (tensor,) = message.inputs
    assert list(tensor.shape) == [3, 30]
    assert tensor.parameters["content_type"].string_param == "np"  # what MLServer decodes by
    np.testing.assert_array_equal(
        np.frombuffer(message.raw_input_contents[0], dtype=np.float64).reshape(3, 30), ROWS[:3])


def test_grpc_requests_join_into_one_with_raw_contents() -> None:
    parts = [grpc_inputs(GRPC_METHOD, grpc_request(ROWS[i:i + 1])) for i in range(3)]
    assert len({p.key for p in parts}) == 1  # type: ignore[union-attr]
    message = pb.ModelInferRequest.FromString(grpc_message(parts[0].template, join(parts)))  # type: ignore[arg-type, union-attr]
    assert message.model_name == "breast-cancer"
    assert list(message.inputs[0].shape) == [3, 30]
    np.testing.assert_array_equal(
        np.frombuffer(message.raw_input_contents[0], dtype=np.float64).reshape(3, 30), ROWS[:3])


def test_requests_that_differ_beyond_their_rows_do_not_share_a_batch() -> None:
    one = rest_inputs(PATH, rest_request(ROWS[:1]))
    other_model = rest_inputs("/v2/models/other/infer", rest_request(ROWS[:1]))
    fewer_features = rest_inputs(PATH, rest_request(ROWS[:1, :10]))
    assert one is not None and other_model is not None and fewer_features is not None
    assert len({one.key, other_model.key, fewer_features.key}) == 3


def test_requests_that_cannot_be_batched_are_mirrored_alone() -> None:
    strings = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                      "data": ["a"]}]}).encode()
    assert rest_inputs(PATH, strings) is None
    assert rest_inputs(PATH, b"not json") is None
    assert grpc_inputs(GRPC_METHOD, b"\xff\xff") is None


def test_a_batched_answer_splits_back_by_rows() -> None:
    outputs = {"predict": ("INT64", np.array([[1], [0], [1]])),
               "predict_proba": ("FP64", np.arange(6.0).reshape(3, 2))}
    first, second = split(outputs, [1, 2])
    np.testing.assert_array_equal(first["predict"][1], [[1]])
    np.testing.assert_array_equal(second["predict_proba"][1], [[2.0, 3.0], [4.0, 5.0]])

"""Shadow answers are decoded from either protocol and compared row by row."""

from __future__ import annotations

import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.grpc import converters
from mlserver.types import InferenceResponse, RequestOutput

from serving.agreement import compare, outputs_from_grpc, outputs_from_rest, rest_response, row


def response(labels: list[int], proba: list[list[float]]) -> InferenceResponse:
    return InferenceResponse(model_name="m", outputs=[
        NumpyCodec.encode_output("predict", np.asarray(labels, dtype=np.int64).reshape(-1, 1),
                                 request_output=RequestOutput(name="predict")),
        NumpyCodec.encode_output("predict_proba", np.asarray(proba),
                                 request_output=RequestOutput(name="predict_proba")),
    ])


def as_rest(r: InferenceResponse) -> bytes:
    return r.model_dump_json().encode()


def as_grpc(r: InferenceResponse) -> bytes:
    return converters.ModelInferResponseConverter.from_types(r).SerializeToString()


PRIMARY = response([1, 0, 1], [[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]])
SHADOW = response([1, 1, 1], [[0.2, 0.8], [0.45, 0.55], [0.3, 0.7]])


def test_both_protocols_decode_to_the_same_arrays() -> None:
    rest, grpc_ = outputs_from_rest(as_rest(PRIMARY)), outputs_from_grpc(as_grpc(PRIMARY))
    for name in ("predict", "predict_proba"):
        assert rest[name][0] == grpc_[name][0]
        np.testing.assert_array_equal(rest[name][1], grpc_[name][1])


def test_classifiers_agree_on_labels_not_probabilities() -> None:
    for decode, encode in ((outputs_from_rest, as_rest), (outputs_from_grpc, as_grpc)):
        result = compare(decode(encode(PRIMARY)), decode(encode(SHADOW)), rtol=1e-6)
        assert (result.rows, result.agreed) == (3, 2)
        assert "row 1" in result.detail
        same = compare(decode(encode(PRIMARY)), decode(encode(PRIMARY)), rtol=1e-6)
        assert (same.rows, same.agreed, same.detail) == (3, 3, "")


def test_numeric_outputs_agree_within_tolerance() -> None:
    def regression(values: list[float]) -> InferenceResponse:
        return InferenceResponse(model_name="m", outputs=[NumpyCodec.encode_output(
            "predict", np.asarray(values).reshape(-1, 1))])

    a = outputs_from_rest(as_rest(regression([1.0, 2.0])))
    b = outputs_from_rest(as_rest(regression([1.0 + 1e-9, 2.5])))
    assert compare(a, b, rtol=1e-6).agreed == 1


def test_the_first_disagreeing_row_and_rest_response_round_trip() -> None:
    primary, shadow = outputs_from_rest(as_rest(PRIMARY)), outputs_from_rest(as_rest(SHADOW))
    result = compare(primary, shadow, rtol=1e-6)
    assert (result.rows, result.agreed, result.first_disagreement) == (3, 2, 1)
    assert row(shadow, 1)["predict"] == [1] and row(primary, 1)["predict"] == [0]
    again = outputs_from_rest(rest_response("m", shadow))
    for name in shadow:
        assert again[name][0] == shadow[name][0]
        np.testing.assert_array_equal(again[name][1], shadow[name][1])
    assert compare(primary, primary, rtol=1e-6).first_disagreement is None

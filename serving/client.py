"""A V2 (Open Inference protocol) client for REST and gRPC, on MLServer's own types and codecs.

Requests are built as `mlserver.types.InferenceRequest` with MLServer's NumpyCodec; REST sends its
JSON, gRPC converts it with MLServer's converters and calls the generated
`inference.GRPCInferenceService` stub. The same client talks to one MLServer, to the local router
and to a cluster's Istio ingress (pass the Seldon path prefix or the seldon/namespace metadata).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.grpc import converters
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub
from mlserver.types import InferenceRequest, InferenceResponse, RequestOutput

from .artifacts import INPUT_NAME
from .errors import ServingError

PREDICTOR_HEADER = "x-seldon-predictor"


class InferenceFailed(ServingError):
    def __init__(self, status: int | str, detail: str):
        super().__init__(f"inference failed ({status}): {detail}")
        self.status = status


@dataclass
class Prediction:
    labels: np.ndarray
    probabilities: np.ndarray | None
    model_version: str | None
    predictor: str | None
    latency_s: float
    raw: InferenceResponse = field(repr=False)


def build_request(rows: np.ndarray, outputs: list[str] | None = None) -> InferenceRequest:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    return InferenceRequest(
        inputs=[NumpyCodec.encode_input(INPUT_NAME, rows)],
        outputs=[RequestOutput(name=o) for o in outputs] if outputs else None,
    )


def parse_response(
    response: InferenceResponse, predictor: str | None, latency_s: float
) -> Prediction:
    by_name = {o.name: NumpyCodec.decode_output(o) for o in response.outputs}
    if "predict" not in by_name:
        raise InferenceFailed("bad response", f"no 'predict' output in {list(by_name)}")
    return Prediction(
        labels=by_name["predict"].reshape(-1),
        probabilities=by_name.get("predict_proba"),
        model_version=response.model_version,
        predictor=predictor,
        latency_s=latency_s,
        raw=response,
    )


class RestClient:
    """V2 REST. `base_url` may carry a Seldon prefix: http://host/seldon/<ns>/<deployment>."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 10):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(headers=headers or {}, timeout=timeout)

    def _model_path(self, model: str, version: str | None) -> str:
        return f"{self.base_url}/v2/models/{model}" + (f"/versions/{version}" if version else "")

    def infer(
        self,
        model: str,
        rows: np.ndarray,
        version: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Prediction:
        request = build_request(rows)
        started = time.perf_counter()
        resp = self._http.post(
            self._model_path(model, version) + "/infer",
            content=request.model_dump_json(exclude_none=True),
            headers={"content-type": "application/json", **(headers or {})},
        )
        latency = time.perf_counter() - started
        if resp.status_code != 200:
            raise InferenceFailed(resp.status_code, resp.text)
        return parse_response(
            InferenceResponse.model_validate_json(resp.content),
            resp.headers.get(PREDICTOR_HEADER),
            latency,
        )

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        resp = self._http.get(self._model_path(model, version))
        if resp.status_code != 200:
            raise InferenceFailed(resp.status_code, resp.text)
        return dict(resp.json())

    def model_ready(self, model: str, version: str | None = None) -> bool:
        return self._http.get(self._model_path(model, version) + "/ready").status_code == 200

    def server_live(self) -> bool:
        return self._http.get(f"{self.base_url}/v2/health/live").status_code == 200

    def server_ready(self) -> bool:
        return self._http.get(f"{self.base_url}/v2/health/ready").status_code == 200

    def close(self) -> None:
        self._http.close()


class GrpcClient:
    """V2 gRPC. Through Seldon's ingress, pass metadata {'seldon': dep, 'namespace': ns}."""

    def __init__(self, target: str, metadata: dict[str, str] | None = None, timeout: float = 10):
        self._channel = grpc.insecure_channel(target)
        self._stub = GRPCInferenceServiceStub(self._channel)
        self._metadata = list((metadata or {}).items())
        self._timeout = timeout

    def _call(self, method: Any, request: Any, metadata: dict[str, str] | None = None) -> Any:
        md = self._metadata + list((metadata or {}).items())
        try:
            return method.with_call(request, metadata=md, timeout=self._timeout)
        except grpc.RpcError as e:
            raise InferenceFailed(e.code().name, e.details() or "") from e

    def infer(
        self,
        model: str,
        rows: np.ndarray,
        version: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Prediction:
        request = converters.ModelInferRequestConverter.from_types(
            build_request(rows), model_name=model, model_version=version or ""
        )
        started = time.perf_counter()
        response, call = self._call(self._stub.ModelInfer, request, metadata)
        latency = time.perf_counter() - started
        trailing = dict(call.initial_metadata() or ()) | dict(call.trailing_metadata() or ())
        return parse_response(
            converters.ModelInferResponseConverter.to_types(response),
            trailing.get(PREDICTOR_HEADER),
            latency,
        )

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        request = pb.ModelMetadataRequest(name=model, version=version or "")
        response, _ = self._call(self._stub.ModelMetadata, request)
        return converters.ModelMetadataResponseConverter.to_types(response).model_dump()

    def model_ready(self, model: str, version: str | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version or "")
        response, _ = self._call(self._stub.ModelReady, request)
        return bool(response.ready)

    def server_live(self) -> bool:
        response, _ = self._call(self._stub.ServerLive, pb.ServerLiveRequest())
        return bool(response.live)

    def server_ready(self) -> bool:
        response, _ = self._call(self._stub.ServerReady, pb.ServerReadyRequest())
        return bool(response.ready)

    def close(self) -> None:
        self._channel.close()


def read_rows(path: str) -> np.ndarray:
    """Rows from a CSV (header optional) or a JSON file (a list of rows, or {"rows": [...]})."""
    import json
    from pathlib import Path

    text = Path(path).read_text()
    if path.endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("rows", data.get("instances"))
        rows = np.asarray(data, dtype=np.float64)
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        try:
            float(lines[0].split(",")[0])
        except ValueError:
            lines = lines[1:]  # a header row
        rows = np.asarray([[float(v) for v in ln.split(",")] for ln in lines], dtype=np.float64)
    return rows.reshape(1, -1) if rows.ndim == 1 else rows

"""Score a chunk of feature rows: in-process, or through a deployment (V2 REST or gRPC).

In-process loads a model version only through serving.artifacts.load_verified (every check the
runtime makes, against the deployment spec's digests) and predicts on the whole chunk at once.

Through a deployment, a chunk is cut into V2 requests of `rows_per_request` rows with
`concurrency` of them in flight. A request that fails with 429, a 5xx (gRPC: UNAVAILABLE,
RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN, ABORTED), a connection error or its timeout is sent again
after an exponential backoff with jitter (429's Retry-After is honoured), up to `retries` times;
then the run stops (finished chunks stay done, the same command resumes). A request the
deployment refuses as malformed (400/422, INVALID_ARGUMENT) is split in halves down to the one
row it refuses, which becomes a reject. Any other answer (404, 401 ...) stops the run: it is the
URL, the model or the credentials, not the rows. The answering predictor is the
`x-seldon-predictor` response header (the local router sets it; a cluster's executor may not).
"""

from __future__ import annotations

import asyncio
import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..artifacts import INPUT_NAME, load_verified
from ..client import PREDICTOR_HEADER
from .errors import BatchAborted

IN_PROCESS = "in-process"
_DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP64": np.float64, "FP32": np.float32,
           "BOOL": np.bool_}


@dataclass
class Scored:
    labels: np.ndarray
    proba: np.ndarray
    versions: np.ndarray
    """Model version per row (object array of str)."""
    predictors: np.ndarray
    """Answering predictor per row."""
    refused: dict[int, str] = field(default_factory=dict)
    """Rows (index in the chunk) the deployment refused, and its reason."""
    requests: int = 0
    retried: int = 0

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        keep = np.ones(len(self.labels), dtype=bool)
        keep[list(self.refused)] = False
        return _count(self.predictors[keep]), _count(self.versions[keep])


def _count(values: np.ndarray) -> dict[str, int]:
    if len(values) and (values == values[0]).all():  # the usual case: one predictor, version
        return {str(values[0]): len(values)}
    return dict(Counter(values.tolist()))


class Scorer(Protocol):
    description: str

    def score(self, x: np.ndarray) -> Scored: ...

    def close(self) -> None: ...


class InProcessScorer:
    """A verified model version in this process; digests come from the deployment spec."""

    def __init__(self, version_dir: Path, digests: Mapping[str, str]):
        self.meta, self.model = load_verified(version_dir, digests)
        self.version = self.meta.version
        self.description = f"in-process {self.meta.model}/{self.version} ({version_dir})"

    def score(self, x: np.ndarray) -> Scored:
        n = len(x)
        labels = np.asarray(self.model.predict(x), dtype=np.int64).reshape(-1)
        proba = np.asarray(self.model.predict_proba(x), dtype=np.float64)
        return Scored(labels, proba, np.full(n, self.version, dtype=object),
                      np.full(n, IN_PROCESS, dtype=object))

    def close(self) -> None:
        pass


class Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class Refused(Exception):
    """The deployment says these rows are malformed."""


class Fatal(Exception):
    """Not the rows' fault and not worth retrying (wrong URL, model, credentials)."""


@dataclass
class Answer:
    labels: np.ndarray
    proba: np.ndarray
    version: str
    predictor: str


Send = Callable[[np.ndarray], Awaitable[Answer]]


def _backoff(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(retry_after, cap)
    return min(cap, base * 2**attempt) * random.uniform(0.5, 1.0)


class DeploymentScorer(ABC):
    """Common to REST and gRPC: cutting, concurrency, retries, refusals. One event loop for the
    whole run, so connections are kept between chunks."""

    def __init__(self, rows_per_request: int, concurrency: int, retries: int,
                 backoff_base: float = 0.1, backoff_cap: float = 5.0):
        self.rows_per_request = rows_per_request
        self.concurrency = concurrency
        self.retries = retries
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.description = ""
        self._loop = asyncio.new_event_loop()

    @abstractmethod
    async def _send(self, x: np.ndarray) -> Answer:
        """One V2 request of these rows (RestScorer, GrpcScorer)."""

    async def _aclose(self) -> None:  # noqa: B027 (optional hook: nothing to close by default)
        return None

    def close(self) -> None:
        self._loop.run_until_complete(self._aclose())
        self._loop.close()

    def score(self, x: np.ndarray) -> Scored:
        return self._loop.run_until_complete(self._score(x))

    async def _score(self, x: np.ndarray) -> Scored:
        n = len(x)
        out = Scored(np.zeros(n, dtype=np.int64), np.zeros((n, 0)), np.full(n, "", dtype=object),
                     np.full(n, "", dtype=object))
        ranges = iter(range(0, n, self.rows_per_request))

        async def worker() -> None:
            for start in ranges:
                await self._part(x, start, min(start + self.rows_per_request, n), out)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, max(n, 1)))))
        return out

    async def _part(self, x: np.ndarray, start: int, stop: int, out: Scored) -> None:
        try:
            answer = await self._with_retries(x[start:stop], out)
        except Refused as e:
            if stop - start == 1:
                out.refused[start] = f"the deployment refused the row: {e}"
                return
            middle = (start + stop) // 2  # find the row it refuses, score the others
            await self._part(x, start, middle, out)
            await self._part(x, middle, stop, out)
            return
        if out.proba.shape[1] != answer.proba.shape[1]:
            out.proba = np.zeros((len(x), answer.proba.shape[1]))
        out.labels[start:stop] = answer.labels
        out.proba[start:stop] = answer.proba
        out.versions[start:stop] = answer.version
        out.predictors[start:stop] = answer.predictor

    async def _with_retries(self, x: np.ndarray, out: Scored) -> Answer:
        for attempt in range(self.retries + 1):
            out.requests += 1
            try:
                return await self._send(x)
            except Retryable as e:
                if attempt == self.retries:
                    raise BatchAborted(
                        f"{self.description}: a request of {len(x)} rows failed {attempt + 1} "
                        f"times, last: {e}. Finished chunks are kept; run the same command "
                        "again to resume (raise --retries or --timeout if the deployment is "
                        "slow)") from None
                out.retried += 1
                await asyncio.sleep(_backoff(attempt, self.backoff_base, self.backoff_cap,
                                             e.retry_after))
            except Fatal as e:
                raise BatchAborted(f"{self.description}: {e}") from None
        raise AssertionError("unreachable")


def _answer(outputs: dict[str, np.ndarray], n: int, version: str, predictor: str) -> Answer:
    if "predict" not in outputs:
        raise Fatal(f"the answer has no 'predict' output (outputs: {sorted(outputs)})")
    labels = outputs["predict"].reshape(-1).astype(np.int64)
    proba = outputs.get("predict_proba", np.zeros((n, 0)))
    if len(labels) != n or len(proba) != n:
        raise Fatal(f"the answer has {len(labels)} predictions for {n} rows")
    return Answer(labels, proba.reshape(n, -1).astype(np.float64), version, predictor)


class RestScorer(DeploymentScorer):
    """V2 REST over httpx. `url` is the deployment's base URL, with the Seldon prefix through an
    ingress or the local router: http://host/seldon/<namespace>/<deployment>."""

    def __init__(self, url: str, model: str, version: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 30.0, **kw: Any):
        super().__init__(**kw)
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/infer") else (
            f"{base}/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer")
        self.headers = {"content-type": "application/json", **(headers or {})}
        self.timeout = timeout
        self.description = f"REST {self.endpoint}"
        self._client: Any = None

    async def _send(self, x: np.ndarray) -> Answer:
        import httpx
        import orjson

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, headers=self.headers,
                limits=httpx.Limits(max_connections=self.concurrency,
                                    max_keepalive_connections=self.concurrency))
        x = np.ascontiguousarray(x, dtype=np.float64)
        body = orjson.dumps({"inputs": [{"name": INPUT_NAME, "datatype": "FP64",
                                         "shape": list(x.shape), "data": x.reshape(-1)}]},
                            option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            resp = await self._client.post(self.endpoint, content=body)
        except httpx.TransportError as e:  # connection refused/reset, timeouts
            raise Retryable(f"{type(e).__name__}: {e}") from None
        status = resp.status_code
        if status == 429 or status >= 500:
            after = resp.headers.get("retry-after")
            raise Retryable(f"{status} {resp.text[:200]}",
                            float(after) if after and after.isdigit() else None)
        if status in (400, 422):
            raise Refused(f"{status} {resp.text[:300]}")
        if status != 200:
            raise Fatal(f"the deployment answered {status}: {resp.text[:300]}; check --url, "
                        "--model and any headers it needs")
        try:
            data = orjson.loads(resp.content)
            outputs = {o["name"]: np.asarray(o["data"], dtype=_DTYPES.get(o["datatype"],
                                                                            np.float64))
                       .reshape(o["shape"]) for o in data["outputs"]}
        except (ValueError, KeyError, TypeError) as e:
            raise Fatal(f"the answer is not a V2 inference response: {e}") from None
        return _answer(outputs, len(x), str(data.get("model_version") or ""),
                       resp.headers.get(PREDICTOR_HEADER) or "")

    async def _aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


_RETRY_CODES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN",
                "ABORTED"}


class GrpcScorer(DeploymentScorer):
    """V2 gRPC (grpcio, the stubs in mlserver.grpc) with the tensor as raw_input_contents.
    Through Seldon's ingress or the local router pass metadata {'seldon': <deployment>,
    'namespace': <namespace>}."""

    def __init__(self, target: str, model: str, version: str | None = None,
                 metadata: Mapping[str, str] | None = None, timeout: float = 30.0, **kw: Any):
        super().__init__(**kw)
        self.target, self.model, self.version = target, model, version or ""
        self.metadata = [(k.lower(), v) for k, v in (metadata or {}).items()]
        self.timeout = timeout
        self.description = f"gRPC {target} model {model}"
        self._channel: Any = None
        self._stub: Any = None

    async def _send(self, x: np.ndarray) -> Answer:
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb
        from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.target, options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
            self._stub = GRPCInferenceServiceStub(self._channel)
        x = np.ascontiguousarray(x, dtype="<f8")
        request = pb.ModelInferRequest(
            model_name=self.model, model_version=self.version,
            inputs=[pb.ModelInferRequest.InferInputTensor(name=INPUT_NAME, datatype="FP64",
                                                          shape=list(x.shape))],
            raw_input_contents=[x.tobytes()])
        try:
            call = self._stub.ModelInfer(request, metadata=self.metadata, timeout=self.timeout)
            response = await call
            answered = (dict(await call.initial_metadata() or ())
                        | dict(await call.trailing_metadata() or ()))
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if code in _RETRY_CODES:
                raise Retryable(f"{code} {e.details()}") from None
            if code == "INVALID_ARGUMENT":
                raise Refused(f"{code} {e.details()}") from None
            raise Fatal(f"the deployment answered {code}: {e.details()}; check --grpc, --model "
                        "and the seldon/namespace metadata") from None
        outputs = {}
        raw = list(response.raw_output_contents)
        for i, o in enumerate(response.outputs):
            dtype = _DTYPES.get(o.datatype, np.float64)
            if raw:
                values = np.frombuffer(raw[i], dtype=np.dtype(dtype).newbyteorder("<"))
            elif o.datatype in ("INT64", "INT32"):
                values = np.asarray(o.contents.int64_contents or o.contents.int_contents)
            else:
                values = np.asarray(o.contents.fp64_contents or o.contents.fp32_contents)
            outputs[o.name] = values.reshape(list(o.shape))
        return _answer(outputs, len(x), response.model_version,
                       str(answered.get(PREDICTOR_HEADER, "")))

    async def _aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def in_process_from_spec(values_path: str | Path, models: str | Path | None = None,
                         version: str | None = None) -> tuple[InProcessScorer, list[str], str]:
    """The spec's model version (default: the stable predictor's), verified against the spec's
    model.artifacts digests and loaded: the scorer, its feature names, and what it is (for the
    manifest)."""
    from ..artifacts import version_dir
    from ..spec import load_spec, stable_predictor

    spec = load_spec(values_path)
    version = version or stable_predictor(spec.predictors).version
    root = Path(models or spec.model.local_repository)
    scorer = InProcessScorer(version_dir(root, spec.model.name, version), spec.model.artifacts)
    key = f"in-process {spec.model.name}/{version} sha256={spec.model.artifacts.get(version)}"
    return scorer, list(scorer.meta.dataset.features), key

"""The MLServer runtime for our artifacts: mlserver-sklearn, but verified, stricter and isolated.

- unpickles an artifact only when its sha256 is the one the deployment spec records for its
  version (SERVING_ARTIFACT_DIGESTS, from the values file's model.artifacts; never from the model
  folder), its model-settings.json points inside its own folder, and metadata.json agrees (sha256,
  library versions): unpickling runs code, so a swapped file must never be loaded;
- serves the version's compiled form (model.onnx, run by ONNX Runtime; serving.compiled) when
  training proved it answers like scikit-learn and the spec binds its digest, else the
  scikit-learn model; the log and the V2 model metadata (parameters.serving_predictor) say which;
- returns class probabilities next to labels when the client asks for no particular output;
- reads every request on its own and answers anything malformed (shape, datatype, data that does
  not fill the shape, non-numbers, NaN, outputs, content types; over gRPC also raw_input_contents)
  with a 400 / INVALID_ARGUMENT naming the field, instead of a 500 from deep inside scikit-learn;
- batches requests itself, after each was read and checked (MLServer's adaptive batching merges
  the V2 requests first, so one malformed request failed, or silently changed, the answers of the
  requests batched with it). See RowBatcher;
- has an opt-in fault switch (env SERVING_FAULT_*) so rollouts can be tested against a canary that
  really fails or is really slow. It is off unless those variables are set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
    RequestInput,
)
from mlserver_sklearn import SKLearnModel
from mlserver_sklearn.sklearn import PREDICT_OUTPUT, PREDICT_PROBA_OUTPUT
from sklearn.pipeline import Pipeline

from . import artifacts, datatypes
from .compiled import OnnxPredictor, Predictor, SklearnPredictor
from .errors import ArtifactError

# under MLServer's logger, so its handlers (and log format) show these lines
logger = logging.getLogger("mlserver.serving")

NUMERIC_DATATYPES = datatypes.NUMERIC
#: content types a request, its input or an output may declare: numpy's, or none
CONTENT_TYPES = (None, "np")
#: parameters.extra key under which the runtime keeps the batching it took over from MLServer
#: (so the inference worker of a parallel_workers > 0 server, which gets the settings the main
#: process changed, batches too)
_BATCHING_KEY = "serving_batching"
#: batching pays only for a model whose one-row answer costs more than this (microseconds): the
#: batch's future and timer cost tens of microseconds and a lone request waits out the window, so
#: a compiled model (~10 us a row) is never batched; scikit-learn's (300 us to 15 ms) are
BATCH_PAYS_ABOVE_US = 100.0

Rows = np.ndarray
Answer = dict[str, np.ndarray]


class InjectedFault(MLServerError):
    def __init__(self) -> None:
        super().__init__("injected fault (SERVING_FAULT_ERROR_RATE is set)", status_code=500)


class RowBatcher:
    """Adaptive batching of requests that were already read and checked, one by one.

    The first request of a batch waits up to `max_time` seconds for others; the batch leaves when
    it has `max_size` requests or the time is up (MLServer's adaptive batching semantics). What
    is merged is only rows: float64 arrays of the same width, every one finite. The model runs
    once on them all and each request gets its own rows' answers, which for scikit-learn's
    row-wise predictors (everything trained here) are the answers it would get alone. If the
    batch fails anyway, every request is run again on its own, so an error is only ever the
    error of the request that caused it.
    """

    def __init__(
        self,
        compute: Callable[[Rows, Sequence[str]], Answer],
        max_size: int,
        max_time: float,
    ) -> None:
        self._compute = compute
        self._max_size = max_size
        self._max_time = max_time
        self._pending: list[tuple[Rows, Sequence[str], asyncio.Future[Answer]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, rows: Rows, outputs: Sequence[str]) -> Answer:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._pending.append((rows, outputs, future))
        if len(self._pending) >= self._max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._max_time, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        for (_, _, future), outcome in zip(batch, self._run(batch), strict=True):
            if future.done():  # the caller went away
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _run(
        self, batch: list[tuple[Rows, Sequence[str], asyncio.Future[Answer]]]
    ) -> list[Answer | BaseException]:
        if len(batch) > 1:
            wanted = sorted({name for _, outputs, _ in batch for name in outputs})
            try:
                merged = self._compute(np.concatenate([rows for rows, _, _ in batch]), wanted)
            except Exception:  # someone's rows made the model fail: find out whose
                logger.warning("a batch of %d requests failed; answering each alone", len(batch))
            else:
                answers: list[Answer | BaseException] = []
                start = 0
                for rows, outputs, _ in batch:
                    stop = start + len(rows)
                    answers.append({name: merged[name][start:stop] for name in outputs})
                    start = stop
                return answers
        outcomes: list[Answer | BaseException] = []
        for rows, outputs, _ in batch:
            try:
                outcomes.append(self._compute(rows, outputs))
            except Exception as e:  # noqa: BLE001 - handed to the caller it belongs to
                outcomes.append(e)
        return outcomes


def _take_over_batching(settings: ModelSettings) -> tuple[int, float]:
    """Adaptive batching as configured for MLServer (model settings, MLSERVER_MODEL_MAX_BATCH_*),
    turned off in MLServer and returned for RowBatcher.

    MLServer's AdaptiveBatcher merges the V2 requests themselves (BatchedRequests) before the
    runtime sees them: shapes are trusted, data are concatenated and re-split by the declared
    shapes, the first request's datatype and the union of parameters and outputs apply to all,
    and one failure (or an exception while merging) fails every request of the batch, or all
    pending ones. So this runtime never lets it run: it reads each request first and batches rows.
    """
    extra = settings.parameters.extra if settings.parameters else None
    taken = (extra or {}).get(_BATCHING_KEY)
    if taken:
        size, seconds = int(taken[0]), float(taken[1])
    else:
        size, seconds = settings.max_batch_size, settings.max_batch_time
    settings.max_batch_size = 0
    settings.max_batch_time = 0.0
    if settings.parameters is not None:
        settings.parameters.extra = {**(extra or {}), _BATCHING_KEY: [size, seconds]}
    return size, seconds


class VerifiedSKLearnModel(SKLearnModel):
    def __init__(self, settings: ModelSettings) -> None:
        self._batch_size, self._batch_time = _take_over_batching(settings)
        super().__init__(settings)
        self._batcher: RowBatcher | None = None

    async def load(self) -> bool:
        try:
            artifact, meta = self._verified_artifact()
            compiled = artifacts.verify_compiled(
                artifact.parent, meta, artifacts.compiled_digest(self.version or meta.version))
        except ArtifactError as e:
            # MLServer marks the model as failed (and, at start-up, stops).
            logger.error("%s", e.message)
            raise
        self._model = joblib.load(artifact)
        self._predictor: Predictor
        if isinstance(compiled, Path) and meta.compiled and meta.compiled.input_type:
            self._predictor = OnnxPredictor(compiled, meta.compiled.input_type)
            self._served_by = (f"onnxruntime {meta.compiled.libraries['onnxruntime']} "
                               f"(model.onnx, sha256 {meta.compiled.sha256}, {meta.compiled.input_type})")
        else:
            self._predictor = SklearnPredictor(self._model)
            self._predictor.reason = str(compiled)
            self._served_by = f"scikit-learn (model.joblib); {compiled}"
        logger.info("%s %s is served by %s", self.name, self.version, self._served_by)
        self._n_features = int(getattr(self._model, "n_features_in_", len(meta.dataset.features)))
        final = self._model.steps[-1][-1] if isinstance(self._model, Pipeline) else self._model
        self._outputs = (PREDICT_OUTPUT,) + (
            (PREDICT_PROBA_OUTPUT,) if hasattr(final, PREDICT_PROBA_OUTPUT) else ()
        )
        self._error_rate = float(os.environ.get("SERVING_FAULT_ERROR_RATE", "0") or 0)
        self._latency_s = float(os.environ.get("SERVING_FAULT_LATENCY_MS", "0") or 0) / 1000
        batching = "off"
        if self._batch_size > 1 and self._batch_time > 0:
            row_us = self._one_row_us()
            if row_us <= BATCH_PAYS_ABOVE_US:
                batching = (f"off: one row takes {row_us:.0f} us with {self._predictor.kind}, "
                            f"batching pays above {BATCH_PAYS_ABOVE_US:g} us")
            elif self._answers_rows_independently():
                self._batcher = RowBatcher(self._compute, self._batch_size, self._batch_time)
                batching = (f"{self._batch_size} requests / {self._batch_time * 1000:g} ms, of "
                            f"checked rows (one row takes {row_us:.0f} us)")
            else:
                logger.warning("%s %s answers a row differently next to other rows: batching "
                               "stays off", self.name, self.version)
        logger.info("loaded %s %s (sha256 %s matches the spec's; batching %s)", self.name,
                    self.version, meta.artifact.sha256[:12], batching)
        return True

    def _one_row_us(self) -> float:
        """Median time of one single-row answer (what a request costs the model)."""
        row = np.zeros((1, self._n_features))
        times = []
        for _ in range(15):
            started = time.perf_counter()
            self._compute(row, self._outputs)
            times.append(time.perf_counter() - started)
        return float(np.median(times)) * 1e6

    def _answers_rows_independently(self) -> bool:
        """What RowBatcher relies on, checked on this model: rows answered together get the
        answers they get alone."""
        rows = np.random.default_rng(0).normal(size=(6, self._n_features))
        together = self._compute(rows, self._outputs)
        for i in range(len(rows)):
            alone = self._compute(rows[i:i + 1], self._outputs)
            for name in self._outputs:
                same = (np.array_equal if name == PREDICT_OUTPUT else
                        lambda a, b: np.allclose(a, b, rtol=1e-9, atol=1e-12))
                if not same(together[name][i:i + 1], alone[name]):
                    return False
        return True

    def _verified_artifact(self) -> tuple[Path, artifacts.ModelMetadata]:
        source = self._settings._source
        if not source:
            raise ArtifactError(
                f"model {self.name} {self.version}: its settings do not come from a "
                "model-settings.json, so there is no version folder to serve from"
            )
        settings_file = Path(source).resolve()
        artifacts.check_entries(settings_file.parent)
        params = self._settings.parameters
        for key in ("environment_tarball", "environment_path"):
            if params is not None and getattr(params, key, None):
                raise ArtifactError(
                    f"refusing to load {settings_file}: parameters.{key} is set; an environment "
                    "from outside the verified artifact runs unverified code. Remove it."
                )
        artifact = artifacts.resolve_artifact(settings_file, params.uri if params else None)
        expected = artifacts.expected_digest(self.version, artifact)
        meta = artifacts.verify(settings_file.parent, expected, artifact, self.version)
        if meta.model != self.name:
            raise ArtifactError(
                f"refusing to load {artifact}: metadata.json describes model {meta.model} but "
                f"it is served as {self.name}"
            )
        return artifact, meta

    async def metadata(self) -> MetadataModelResponse:
        """MLServer's, plus which predictor answers (V2 metadata, REST and gRPC)."""
        response = await super().metadata()
        parameters = response.parameters or Parameters()
        extra = {"serving_predictor": self._predictor.kind, "serving_served_by": self._served_by}
        response.parameters = Parameters(**parameters.model_dump(exclude_none=True), **extra)
        return response

    # -- requests ---------------------------------------------------------------------------

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows, outputs = self._read(payload)
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._error_rate and random.random() < self._error_rate:
            raise InjectedFault()
        if self._batcher is not None:
            answer = await self._batcher.submit(rows, outputs)
        else:
            answer = self._compute(rows, outputs)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, answer[name]) for name in outputs],
        )

    def _compute(self, rows: Rows, outputs: Sequence[str]) -> Answer:
        try:
            return self._predictor.answer(rows, outputs)
        except ValueError as e:
            # scikit-learn refusing the values, e.g. beyond float32 for a tree ensemble
            raise InferenceError(f"inputs[0].data: the model refused these values: {e}") from e

    def _expected(self) -> str:
        return f"one FP64 tensor of shape [n, {self._n_features}]"

    def _read(self, payload: InferenceRequest) -> tuple[Rows, tuple[str, ...]]:
        """The request's rows (float64, [n, features], finite) and the outputs it asks for,
        or an InferenceError (400 / INVALID_ARGUMENT) naming the field that is wrong."""
        _check_content_type(payload.parameters, "parameters")
        inputs = payload.inputs or []
        if len(inputs) != 1:
            raise InferenceError(
                f"inputs: expected {self._expected()} in 'inputs', got {len(inputs)} tensors"
            )
        rows = self._read_rows(inputs[0])
        return rows, self._read_outputs(payload)

    def _read_outputs(self, payload: InferenceRequest) -> tuple[str, ...]:
        if not payload.outputs:
            return self._outputs
        names: list[str] = []
        for i, output in enumerate(payload.outputs):
            if output.name not in self._outputs:
                raise InferenceError(
                    f"outputs[{i}].name is {output.name!r}; this model answers "
                    + " and ".join(repr(o) for o in self._outputs)
                )
            if output.name in names:
                raise InferenceError(f"outputs[{i}].name: {output.name!r} is asked twice")
            _check_content_type(output.parameters, f"outputs[{i}].parameters")
            names.append(output.name)
        return tuple(names)

    def _read_rows(self, tensor: RequestInput) -> Rows:
        n = self._n_features
        datatype = str(getattr(tensor.datatype, "value", tensor.datatype))
        if datatype not in NUMERIC_DATATYPES:
            raise InferenceError(
                f"inputs[0].datatype is {datatype}; expected {self._expected()} (the features "
                "are numbers)"
            )
        _check_content_type(tensor.parameters, "inputs[0].parameters")
        shape = list(tensor.shape or [])
        if len(shape) != 2 or shape[1] != n:
            raise InferenceError(
                f"inputs[0].shape is {shape}; expected {self._expected()} (one row per sample, "
                f"{n} features in dataset order)"
            )
        if not all(isinstance(d, int) for d in shape) or shape[0] < 1:
            raise InferenceError(
                f"inputs[0].shape is {shape}; the number of rows must be a whole number, at "
                "least 1"
            )
        data = getattr(tensor.data, "root", tensor.data)
        if not isinstance(data, (list, tuple)):
            raise InferenceError(
                f"inputs[0].data is a {type(data).__name__}; expected a list of numbers"
            )
        try:
            values = np.asarray(data)
        except (ValueError, TypeError):
            raise InferenceError(
                "inputs[0].data is ragged (nested lists of different lengths); send the rows "
                "flat, row after row, or as lists of equal length"
            ) from None
        if values.dtype.kind not in "iuf":
            raise InferenceError(f"inputs[0].data: {_first_non_number(data)}; every value must "
                                 "be a number")
        needed = shape[0] * n
        if values.size != needed:
            raise InferenceError(
                f"inputs[0].data holds {values.size} numbers but inputs[0].shape {shape} needs "
                f"{needed}"
            )
        rows = _as_declared(values, datatype).reshape(shape[0], n)
        if not np.isfinite(rows).all():
            r, c = (int(i) for i in np.argwhere(~np.isfinite(rows))[0])
            raise InferenceError(
                f"inputs[0].data: row {r}, feature {c} is {rows[r, c]}; every value must be a "
                "finite number"
            )
        return rows


def _check_content_type(parameters: Any, where: str) -> None:
    content_type = getattr(parameters, "content_type", None)
    if content_type not in CONTENT_TYPES:
        raise InferenceError(
            f"{where}.content_type is {content_type!r}; this model reads and answers numeric "
            "tensors (content_type 'np' or none)"
        )


def _first_non_number(data: Any) -> str:
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop(0)
        if isinstance(value, (list, tuple)):
            stack[:0] = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"inputs[0].data{where} is {value!r}"
        elif isinstance(value, int) and not -(2**63) <= value < 2**64:
            return f"inputs[0].data{where} is {value}, beyond 64 bits"
    return "inputs[0].data holds values that are not numbers"


def _as_declared(values: np.ndarray, datatype: str) -> np.ndarray:
    """float64 values as the tensor's datatype holds them: integers must be whole and within
    their type's range, floats are rounded to their type (FP32, FP16) as a typed array would."""
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind in "iu":
        if values.dtype.kind == "f" and not np.array_equal(values, np.floor(values)):
            raise InferenceError(
                f"inputs[0].data holds numbers that are not whole, but inputs[0].datatype is "
                f"{datatype}; send FP64 or whole numbers"
            )
        info = np.iinfo(dtype)
        low, high = values.min(initial=0), values.max(initial=0)
        if low < info.min or high > info.max:
            raise InferenceError(
                f"inputs[0].data holds {low if low < info.min else high}, outside {datatype}'s "
                f"range {info.min}..{info.max}"
            )
        return values.astype(np.float64)
    with np.errstate(over="ignore"):  # beyond FP32/FP16: inf, refused as not finite
        return values.astype(dtype).astype(np.float64)


# -- gRPC requests, before MLServer converts them -----------------------------------------------
#
# MLServer turns a gRPC ModelInferRequest into an InferenceRequest (ModelInferRequestConverter,
# called by its servicer before any runtime code) and unpacks raw_input_contents there with
# struct, trusting shape and datatype: a raw tensor whose byte length does not match, an unknown
# datatype or a negative dimension raised struct.error / ValueError, which the servicer answers
# with INTERNAL. There is no hook between the servicer and the converter, so this module, which
# MLServer imports in its main process before the model is loaded, wraps the converter once: it
# checks the raw contents against shape and datatype first and turns any other failure to read
# the request into InferenceError, which the servicer answers with INVALID_ARGUMENT.

_ITEM_BYTES = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1,
               "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
_V2_DATATYPES = frozenset(_ITEM_BYTES) | {"BYTES"}


def check_grpc_request(request: Any) -> None:
    """Refuse a gRPC ModelInferRequest whose raw_input_contents cannot be what it declares."""
    raw = list(request.raw_input_contents)
    if not raw:
        return
    inputs = list(request.inputs)
    if len(raw) != len(inputs):
        raise InferenceError(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; send one raw "
            "entry per input"
        )
    for i, (tensor, content) in enumerate(zip(inputs, raw, strict=True)):
        if tensor.HasField("contents") and tensor.contents.ListFields():
            raise InferenceError(
                f"inputs[{i}].contents is set next to raw_input_contents; send each tensor's "
                "data once, typed or raw"
            )
        if tensor.datatype not in _V2_DATATYPES:
            raise InferenceError(f"inputs[{i}].datatype {tensor.datatype!r} is not a V2 datatype")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InferenceError(f"inputs[{i}].shape {shape} has a negative dimension")
        if tensor.datatype == "BYTES":
            continue  # length-prefixed elements; the converter's errors are caught below
        needed = math.prod(shape) * _ITEM_BYTES[tensor.datatype]
        if len(content) != needed:
            raise InferenceError(
                f"raw_input_contents[{i}] holds {len(content)} bytes but inputs[{i}].shape "
                f"{shape} of {tensor.datatype} needs {needed}"
            )


def _install_grpc_request_checks() -> None:
    from mlserver.grpc import converters

    converter = converters.ModelInferRequestConverter
    if getattr(converter.to_types, "_serving_checked", False):
        return
    original = converter.to_types.__func__  # type: ignore[attr-defined]

    def to_types(cls: type, pb_object: Any) -> InferenceRequest:
        check_grpc_request(pb_object)
        try:
            return original(cls, pb_object)  # type: ignore[no-any-return]
        except MLServerError:
            raise
        except Exception as e:
            where = "raw_input_contents" if pb_object.raw_input_contents else "inputs"
            raise InferenceError(f"{where}: cannot be read as declared: {e}") from e

    to_types._serving_checked = True  # type: ignore[attr-defined]
    converter.to_types = classmethod(to_types)  # type: ignore[method-assign,assignment]


_install_grpc_request_checks()

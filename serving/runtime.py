"""The MLServer runtime for our artifacts: mlserver-sklearn, but verified and stricter.

- verifies sha256 and library versions from metadata.json *before* joblib.load (unpickling runs
  code, so a swapped file must never be loaded);
- returns class probabilities next to labels when the client asks for no particular output;
- answers a wrong shape or datatype with a 400 that names the expected tensor, instead of a 500
  from deep inside scikit-learn;
- has an opt-in fault switch (env SERVING_FAULT_*) so rollouts can be tested against a canary that
  really fails or is really slow. It is off unless those variables are set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path

import joblib
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, RequestOutput
from mlserver.utils import get_model_uri
from mlserver_sklearn import SKLearnModel
from mlserver_sklearn.sklearn import PREDICT_OUTPUT, PREDICT_PROBA_OUTPUT, WELLKNOWN_MODEL_FILENAMES
from sklearn.pipeline import Pipeline

from . import artifacts, datatypes
from .errors import ArtifactError

logger = logging.getLogger(__name__)

NUMERIC_DATATYPES = datatypes.NUMERIC


class InjectedFault(MLServerError):
    def __init__(self) -> None:
        super().__init__("injected fault (SERVING_FAULT_ERROR_RATE is set)", status_code=500)


class VerifiedSKLearnModel(SKLearnModel):
    async def load(self) -> bool:
        model_uri = Path(
            await get_model_uri(self._settings, wellknown_filenames=WELLKNOWN_MODEL_FILENAMES)
        )
        try:
            meta = artifacts.verify(model_uri.parent, model_uri)
        except ArtifactError as e:
            # MLServer marks the model as failed and keeps serving everything else.
            logger.error("%s", e.message)
            raise
        self._model = joblib.load(model_uri)
        self._n_features = len(meta.dataset.features)
        self._error_rate = float(os.environ.get("SERVING_FAULT_ERROR_RATE", "0") or 0)
        self._latency_s = float(os.environ.get("SERVING_FAULT_LATENCY_MS", "0") or 0) / 1000
        logger.info(
            "loaded %s %s (sha256 %s verified)", meta.model, meta.version, meta.artifact.sha256[:12]
        )
        return True

    def _has_proba(self) -> bool:
        final = self._model.steps[-1][-1] if isinstance(self._model, Pipeline) else self._model
        return hasattr(final, PREDICT_PROBA_OUTPUT)

    def _check_request(self, payload: InferenceRequest) -> InferenceRequest:
        if not payload.outputs:
            names = [PREDICT_OUTPUT] + ([PREDICT_PROBA_OUTPUT] if self._has_proba() else [])
            payload.outputs = [RequestOutput(name=n) for n in names]
        self._check_inputs(payload)
        return super()._check_request(payload)

    def _check_inputs(self, payload: InferenceRequest) -> None:
        expected = f"one FP64 tensor of shape [n, {self._n_features}]"
        if len(payload.inputs) != 1:
            raise InferenceError(
                f"expected {expected} in 'inputs', got {len(payload.inputs)} tensors"
            )
        tensor = payload.inputs[0]
        if tensor.datatype not in NUMERIC_DATATYPES:
            raise InferenceError(
                f"inputs[0].datatype is {tensor.datatype}; expected {expected} "
                "(the features are numbers)"
            )
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] != self._n_features:
            raise InferenceError(
                f"inputs[0].shape is {shape}; expected {expected} (one row per sample, "
                f"{self._n_features} features in dataset order)"
            )

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._error_rate and random.random() < self._error_rate:
            raise InjectedFault()
        try:
            return await super().predict(payload)
        except (ValueError, TypeError) as e:
            # e.g. data whose element count does not match the declared shape
            raise InferenceError(f"could not decode inputs[0]: {e}") from e

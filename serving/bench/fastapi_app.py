"""The baseline serving.bench.speed compares us with: the plain app a user would write instead of
MLServer. FastAPI + uvicorn, one joblib file, predict per request. A benchmark fixture only: it
unpickles the file it is given without any check, which the project's runtime never does.

    SERVING_BENCH_MODEL=models/breast-cancer/v1/model.joblib \
        uvicorn serving.bench.fastapi_app:app --host 127.0.0.1 --port 8000

    curl -s localhost:8000/predict -H 'content-type: application/json' \
        -d '{"rows": [[17.99, 10.38, ...30 features]]}'
"""

from __future__ import annotations

import os

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_ENV = "SERVING_BENCH_MODEL"

model = joblib.load(os.environ[MODEL_ENV])
app = FastAPI(title="plain scikit-learn app")


class Rows(BaseModel):
    rows: list[list[float]]


class Prediction(BaseModel):
    labels: list[int]
    probabilities: list[list[float]]


@app.post("/predict")
def predict(body: Rows) -> Prediction:
    x = np.asarray(body.rows, dtype=np.float64)
    return Prediction(labels=model.predict(x).tolist(),
                      probabilities=model.predict_proba(x).tolist())

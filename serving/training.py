"""Train the model versions of the use case, deterministically, into MLServer model folders."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from . import compiled, dataset
from .artifacts import (
    ARTIFACT_FILE,
    COMPILED_FILE,
    METADATA_FILE,
    SETTINGS_FILE,
    ArtifactRecord,
    DatasetRecord,
    ModelMetadata,
    library_versions,
    model_settings,
    sha256_file,
    write_json,
)

MODEL_NAME = "breast-cancer"


@dataclass(frozen=True)
class VersionRecipe:
    version: str
    description: str
    build: Callable[[], ClassifierMixin]


# The versions a rollout moves between. Every estimator has a fixed random_state, so training twice
# gives byte-identical artifacts.
RECIPES = [
    VersionRecipe(
        "v1",
        "stable: standardised logistic regression",
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    ),
    VersionRecipe(
        "v2",
        "canary candidate: random forest",
        lambda: RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1),
    ),
    VersionRecipe(
        "v3",
        "shadow candidate: gradient boosting",
        lambda: GradientBoostingClassifier(n_estimators=100, random_state=0),
    ),
    VersionRecipe(
        "v4",
        "naive baseline (always the majority class): a candidate that should be rejected",
        lambda: DummyClassifier(strategy="most_frequent"),
    ),
]


def _json_safe_params(estimator: Any) -> dict[str, Any]:
    """Training parameters for metadata; nested estimators become their class names."""
    params = estimator.get_params(deep=True)
    safe: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        if isinstance(value, (str, int, float, bool)) or value is None:
            safe[key] = value
        elif isinstance(value, (list, tuple)) and not isinstance(estimator, Pipeline):
            safe[key] = json.loads(json.dumps(value, default=str))
        elif key != "steps":
            safe[key] = type(value).__name__
    return safe


def _estimator_name(estimator: Any) -> str:
    if isinstance(estimator, Pipeline):
        return " -> ".join(type(step).__name__ for _, step in estimator.steps)
    return type(estimator).__name__


def train_version(recipe: VersionRecipe, data: dataset.Dataset, out_root: Path) -> ModelMetadata:
    estimator = recipe.build()
    estimator.fit(data.x_train, data.y_train)
    predicted = estimator.predict(data.x_test)
    proba = estimator.predict_proba(data.x_test)[:, 1]
    metrics = {
        "accuracy": round(float(accuracy_score(data.y_test, predicted)), 6),
        "f1": round(float(f1_score(data.y_test, predicted)), 6),
        "roc_auc": round(float(roc_auc_score(data.y_test, proba)), 6),
    }

    target = out_root / MODEL_NAME / recipe.version
    target.mkdir(parents=True, exist_ok=True)
    artifact = target / ARTIFACT_FILE
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    artifact.write_bytes(buffer.getvalue())

    # the compiled form, proven on the whole dataset and on perturbed rows (serving.compiled)
    outcome = compiled.compile_version(estimator, np.vstack([data.x_train, data.x_test]))
    compiled_path = target / COMPILED_FILE
    record = outcome.record
    if outcome.onnx is not None:
        compiled_path.write_bytes(outcome.onnx)
        record = record.model_copy(
            update={"sha256": sha256_file(compiled_path), "bytes": len(outcome.onnx)})
    else:
        compiled_path.unlink(missing_ok=True)  # a stale one from an earlier training

    write_json(
        target / SETTINGS_FILE,
        model_settings(MODEL_NAME, recipe.version, data.n_features, len(data.class_names)),
    )
    meta = ModelMetadata(
        model=MODEL_NAME,
        version=recipe.version,
        description=recipe.description,
        estimator=_estimator_name(estimator),
        params=_json_safe_params(estimator),
        artifact=ArtifactRecord(
            file=ARTIFACT_FILE, sha256=sha256_file(artifact), bytes=artifact.stat().st_size
        ),
        dataset=DatasetRecord(
            name=dataset.DATASET_NAME,
            fingerprint=dataset.fingerprint(data),
            n_train=len(data.y_train),
            n_test=len(data.y_test),
            features=data.feature_names,
            classes=data.class_names,
        ),
        libraries=library_versions(),
        metrics=metrics,
        compiled=record,
    )
    write_json(target / METADATA_FILE, meta.model_dump(mode="json"))
    return meta


def train_all(out_root: Path, versions: list[str] | None = None) -> list[ModelMetadata]:
    data = dataset.load()
    recipes = [r for r in RECIPES if versions is None or r.version in versions]
    unknown = set(versions or []) - {r.version for r in RECIPES}
    if unknown:
        known = ", ".join(r.version for r in RECIPES)
        raise ValueError(f"unknown version(s) {sorted(unknown)}; known versions: {known}")
    return [train_version(recipe, data, out_root) for recipe in recipes]

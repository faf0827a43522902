"""Versioned, checksummed model artifacts laid out as MLServer model folders.

models/<model>/<version>/model.joblib         the fitted estimator (joblib)
models/<model>/<version>/model-settings.json  what MLServer reads: runtime, tensors
models/<model>/<version>/metadata.json        sha256, dataset, library versions, metrics
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .errors import ArtifactError, ChecksumMismatch, LibraryVersionMismatch

ARTIFACT_FILE = "model.joblib"
SETTINGS_FILE = "model-settings.json"
METADATA_FILE = "metadata.json"
RUNTIME = "serving.runtime.VerifiedSKLearnModel"
INPUT_NAME = "input-0"
PINNED_LIBRARIES = ("scikit-learn", "numpy", "joblib")


class ArtifactRecord(BaseModel):
    file: str
    sha256: str
    bytes: int


class DatasetRecord(BaseModel):
    name: str
    fingerprint: str = Field(description="sha256 of the train and hold-out arrays")
    n_train: int
    n_test: int
    features: list[str]
    classes: list[str]


class ModelMetadata(BaseModel):
    """metadata.json: everything needed to trust and reproduce one model version."""

    model: str
    version: str
    description: str
    estimator: str
    params: dict[str, Any]
    artifact: ArtifactRecord
    dataset: DatasetRecord
    libraries: dict[str, str] = Field(description="versions the artifact was pickled with")
    metrics: dict[str, float] = Field(description="hold-out metrics")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {name: installed_version(name) for name in PINNED_LIBRARIES}
    versions["python"] = platform.python_version()
    return versions


def model_settings(model: str, version: str, n_features: int, n_classes: int) -> dict[str, Any]:
    """The model-settings.json MLServer reads; tensors are declared so metadata names them."""
    return {
        "name": model,
        "implementation": RUNTIME,
        "parameters": {"uri": f"./{ARTIFACT_FILE}", "version": version},
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, n_features]}],
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [-1, 1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, n_classes]},
        ],
    }


def write_json(path: Path, payload: Any) -> None:
    # sorted keys and a trailing newline: byte-identical output for identical content
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_metadata(version_dir: Path) -> ModelMetadata:
    path = version_dir / METADATA_FILE
    try:
        return ModelMetadata.model_validate_json(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(
            f"{path} is missing: every artifact needs its metadata to be verified. "
            "Re-run 'serving train'."
        ) from e
    except ValueError as e:
        raise ArtifactError(f"{path} is not valid metadata: {e}") from e


def verify(version_dir: Path, artifact: Path | None = None) -> ModelMetadata:
    """Check the artifact against metadata.json before anything unpickles it.

    joblib/pickle runs code while loading, so a changed file must never reach joblib.load.
    """
    meta = read_metadata(version_dir)
    artifact = artifact or version_dir / meta.artifact.file
    if not artifact.is_file():
        raise ArtifactError(f"{artifact} is missing; re-run 'serving train'.")
    actual = sha256_file(artifact)
    if actual != meta.artifact.sha256:
        raise ChecksumMismatch(str(artifact), meta.artifact.sha256, actual)
    installed = library_versions()
    for library in PINNED_LIBRARIES:
        recorded = meta.libraries.get(library)
        if recorded is not None and recorded != installed[library]:
            raise LibraryVersionMismatch(str(artifact), library, recorded, installed[library])
    return meta


def list_versions(root: Path) -> list[ModelMetadata]:
    """Every model version under root (models/<model>/<version>/metadata.json)."""
    return [
        ModelMetadata.model_validate_json(p.read_text())
        for p in sorted(root.glob(f"*/*/{METADATA_FILE}"))
    ]


def version_dir(root: Path, model: str, version: str) -> Path:
    path = root / model / version
    if not (path / SETTINGS_FILE).is_file():
        known = ", ".join(f"{m.model}/{m.version}" for m in list_versions(root)) or "none"
        raise ArtifactError(
            f"no model version {model}/{version} under {root} (known: {known}); "
            "run 'make models' or 'serving train'."
        )
    return path

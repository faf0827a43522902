"""Shared fixtures: trained artifacts in a temp folder, real MLServer processes on free ports."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import artifacts, training
from serving.server import MLServerProcess, ServerSettings, free_port

MODEL = training.MODEL_NAME


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`cluster` tests run only against a real cluster: skipped, with the reason, otherwise."""
    if os.environ.get("KUBECONFIG"):
        return
    skip = pytest.mark.skip(
        reason="needs a real cluster with Seldon Core v1: set KUBECONFIG (see README, "
        "'Deploy to a real cluster')"
    )
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


#: sha256 per version of the artifacts `models_root` trained: what a deployment spec would record
TRAINED_DIGESTS: dict[str, str] = {}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All model versions, trained once per test session (about 5 s, most of it proving the
    compiled forms).

    Their digests are what the servers started here expect, through the same path as in
    production: ServerSettings.artifact_digests -> SERVING_ARTIFACT_DIGESTS in MLServer's
    environment (local stacks started by `serving up` get them from the committed values file,
    which test_training checks against a fresh training)."""
    root = tmp_path_factory.mktemp("models")
    TRAINED_DIGESTS.update(artifacts.spec_digests(training.train_all(root)))
    return root


def free_ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def tuned(**fields: object) -> ServerSettings:
    """Tuned settings on free ports, expecting the digests of the artifacts trained here."""
    return ServerSettings.tuned(**free_ports()).model_copy(
        update={"artifact_digests": dict(TRAINED_DIGESTS), **fields}
    )


def start_mlserver(
    model_dir: Path,
    log_dir: Path,
    settings: ServerSettings | None = None,
    env: dict[str, str] | None = None,
) -> MLServerProcess:
    settings = settings or tuned()
    server = MLServerProcess(
        model_dir,
        settings,
        extra_env=env or {},
        log_path=log_dir / f"mlserver-{settings.http_port}.log",
    )
    server.start()
    try:
        server.wait_ready([MODEL])
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def mlserver_v1(
    models_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServerProcess]:
    """One real MLServer serving breast-cancer v1 only."""
    server = start_mlserver(models_root / MODEL / "v1", tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


def tampered_version(models_root: Path, into: Path, version: str, file: str) -> Path:
    """A copy of `version` under `into` whose `file` was changed after training."""
    target = into / MODEL / version
    shutil.copytree(models_root / MODEL / version, target)
    with (target / file).open("ab") as f:
        f.write(b"\x00tampered")
    return target


@pytest.fixture
def tampered_copy(models_root: Path, tmp_path: Path) -> Path:
    """A copy of v1 whose model.joblib was changed after training."""
    return tampered_version(models_root, tmp_path, "v1", "model.joblib")


@pytest.fixture
def repickled_copy(models_root: Path, tmp_path: Path) -> Path:
    """A copy of v1 whose model.joblib is another model, with a metadata.json that matches it:
    what someone who can write models/ can do. Only the spec's digest tells it apart."""
    target = tmp_path / "repickled" / MODEL / "v1"
    shutil.copytree(models_root / MODEL / "v1", target)
    (target / "model.joblib").write_bytes((models_root / MODEL / "v4" / "model.joblib").read_bytes())
    meta = artifacts.read_metadata(target)
    meta.artifact.sha256 = artifacts.sha256_file(target / "model.joblib")
    artifacts.write_json(target / "metadata.json", meta.model_dump(mode="json"))
    return target

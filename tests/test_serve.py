"""`serving serve`: the stable version answers unversioned calls, and a refusal says why."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from serving import artifacts, dataset
from serving.cli import main
from serving.client import RestClient
from serving.k8s.chart import CHART_DIR

from .conftest import MODEL, TRAINED_DIGESTS, free_ports


@pytest.fixture
def values(tmp_path: Path, models_root: Path) -> Path:
    """The chart's values, with the digests of the artifacts trained for this session."""
    path = tmp_path / "values.yaml"
    shutil.copy(CHART_DIR / "values.yaml", path)
    artifacts.record_digests(path, TRAINED_DIGESTS)
    return path


def port_args() -> list[str]:
    ports = free_ports()
    return ["--http-port", str(ports["http_port"]), "--grpc-port", str(ports["grpc_port"]),
            "--metrics-port", str(ports["metrics_port"])]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[str, str]:
        port_list = port_args()
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", *args, *port_list],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        started.append(process)
        assert process.stdout is not None
        banner = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            banner.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert banner and banner[-1].startswith("Ctrl-C"), "".join(banner)
        return "".join(banner), f"http://127.0.0.1:{port_list[1]}"

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_serve_answers_unversioned_calls_with_the_values_files_stable_version(
    serve: object, models_root: Path, values: Path
) -> None:
    banner, url = serve("--models", str(models_root), "--values", str(values))  # type: ignore[operator]
    assert "version v1 (stable)" in banner
    assert "answered by v1 (the stable version" in banner
    assert RestClient(url).infer(MODEL, dataset.sample_rows(2)).model_version == "v1"


def test_serve_all_says_that_unversioned_calls_get_the_highest_version(
    serve: object, models_root: Path, values: Path
) -> None:
    banner, url = serve("--models", str(models_root), "--values", str(values), "--all")  # type: ignore[operator]
    assert "answered by v4 (the highest version served, MLServer's rule; NOT the stable v1" in banner
    client = RestClient(url)
    assert client.infer(MODEL, dataset.sample_rows(1)).model_version == "v4"
    assert client.infer(MODEL, dataset.sample_rows(1), version="v2").model_version == "v2"


def test_serve_refuses_a_repickled_artifact_and_says_why(
    repickled_copy: Path, values: Path
) -> None:
    result = CliRunner().invoke(main, ["serve", "--models", str(repickled_copy.parents[1]),
                                       "--values", str(values), *port_args()])
    assert result.exit_code == 3, result.output
    assert f"refusing to load {repickled_copy / 'model.joblib'}" in result.output
    assert f"the deployment spec expects {TRAINED_DIGESTS['v1']}" in result.output


def test_when_mlserver_stops_while_starting_serve_shows_its_log(
    models_root: Path, values: Path
) -> None:
    args = port_args()
    with socket.socket() as taken:  # MLServer cannot bind its REST port
        taken.bind(("127.0.0.1", int(args[1])))
        taken.listen()
        result = CliRunner().invoke(main, ["serve", "--models", str(models_root), "--values",
                                           str(values), *args])
    assert result.exit_code != 0
    assert "while starting" in result.output
    assert "MLServer's log says:" in result.output
    assert "address already in use" in result.output.lower() or "errno 98" in result.output.lower()

"""Short headless locust runs against a real local stack: reports, the SLO gate, the split."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from matplotlib.image import imread

from tests.k8s.fake_apiserver import FakeApiServer
from tests.router.conftest import Stack

from .conftest import SANE_SLO, TIGHT_SLO, WEIGHTS, hpa, run, values_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(
    load_stack: Stack, models_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, int]:
    """One `serving loadtest` run, REST and gRPC, with the scaling runs: (report dir, its
    standard output, exit code); locust's own tables go to standard error."""
    tmp = tmp_path_factory.mktemp("loadtest")
    done = run(
        ["-m", "serving.cli", "loadtest", "--state-dir", str(load_stack.state_dir),
         "--values", str(values_file(tmp, SANE_SLO, models_root)), "--out", str(tmp / "reports"),
         "--duration", "8", "--users", "8", "--rps", "160",
         "--scaling", "1,2", "--scaling-duration", "3", "--scaling-users", "8"]
    )  # fmt: skip
    (report_dir,) = (tmp / "reports").iterdir()
    assert done.returncode == 0, done.stdout + done.stderr
    return report_dir, done.stdout, done.returncode


def stats_rows(report_dir: Path) -> list[dict[str, str]]:
    with (report_dir / "locust_stats.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_run_writes_locust_csv_and_html_per_predictor_and_plots(
    report: tuple[Path, str, int],
) -> None:
    report_dir, output, code = report
    assert code == 0, output
    entries = {(r["Type"], r["Name"]) for r in stats_rows(report_dir)}
    for predictor in WEIGHTS:
        assert ("POST", f"infer [{predictor}]") in entries, entries
        assert ("grpc", f"infer [{predictor}]") in entries, entries
    assert "infer [canary]" in (report_dir / "report.html").read_text()
    with (report_dir / "locust_stats_history.csv").open() as f:
        assert len(list(csv.DictReader(f))) >= 5
    with (report_dir / "requests.csv").open() as f:
        assert len(list(csv.DictReader(f))) > 500
    for name in ("latency", "throughput", "errors", "replicas"):
        png = report_dir / f"{name}.png"
        assert png.stat().st_size > 10_000, png
        height, width, _ = imread(png).shape
        assert height >= 300 and width >= 800
    with (report_dir / "replicas.csv").open() as f:
        assert {r["predictor"] for r in csv.DictReader(f)} == set(WEIGHTS)


def test_the_report_shows_each_predictor_and_the_gate_passes_a_sane_slo(
    report: tuple[Path, str, int],
) -> None:
    report_dir, output, code = report
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["gate"]["verdict"] == "passed" and code == 0
    assert summary["taskErrors"] == []
    assert {p["scope"] for p in summary["predictors"]} == set(WEIGHTS)
    for p in summary["predictors"]:
        assert p["requests"] > 50 and p["failures"] == 0
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
    assert summary["overall"]["rps"] > SANE_SLO["minRps"]
    markdown = (report_dir / "summary.md").read_text()
    assert "SLO gate: PASSED" in markdown and "## Scaling" in markdown
    assert "SLO gate: PASSED" in output.splitlines()[-2]


def test_the_observed_split_matches_the_weights_within_3_sigma(
    report: tuple[Path, str, int],
) -> None:
    report_dir, _, _ = report
    served = {p: 0 for p in WEIGHTS}
    for r in stats_rows(report_dir):
        if r["Name"].startswith("infer ["):
            served[r["Name"][len("infer [") : -1]] += int(r["Request Count"])
    n = sum(served.values())
    for predictor, weight in WEIGHTS.items():
        p = weight / 100
        z = (served[predictor] - n * p) / math.sqrt(n * p * (1 - p))
        assert abs(z) <= 3, (served, z)
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["weights"] == {k: float(v) for k, v in WEIGHTS.items()}
    assert "router" in summary["weightsSource"]
    assert summary["splitWithinBounds"] is True


def test_scaling_runs_measure_throughput_per_replica_count(report: tuple[Path, str, int]) -> None:
    report_dir, output, _ = report
    with (report_dir / "scaling.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["replicas"]) for r in rows] == [1, 2]
    assert all(float(r["rps"]) > 20 and int(r["failures"]) == 0 for r in rows)
    assert "Throughput against stable replicas" in output


def test_the_gate_fails_impossible_slos_naming_each_and_by_how_much(
    load_stack: Stack, tmp_path: Path
) -> None:
    done = run(
        ["-m", "locust", "-f", "loadtest/locustfile.py,loadtest/shape_constant.py",
         "--headless", "-u", "4", "-t", "3s", "--rps", "40", "--state-dir", str(load_stack.state_dir),
         "--values", str(values_file(tmp_path, TIGHT_SLO)), "RestUser"]
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "SLO gate: FAILED" in out
    assert "overall: p95 latency" in out and "exceeds slo.p95Ms 0.001 ms by" in out
    assert "stable: p99 latency" in out and "exceeds slo.p99Ms 0.002 ms by" in out
    assert "overall: throughput" in out and "below slo.minRps 1e+06 req/s by" in out
    assert "maxErrorRate" not in out  # nothing failed


def test_failed_answers_count_as_errors_of_the_predictor_that_gave_them(
    load_stack: Stack, tmp_path: Path
) -> None:
    done = run(
        ["-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-u", "4", "-r", "4",
         "-t", "3s", "--rps", "40", "--state-dir", str(load_stack.state_dir),
         "--model", "no-such-model", "--values", str(values_file(tmp_path, SANE_SLO))]
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stable: error rate 100.00% exceeds slo.maxErrorRate 5.00% by 95.00 points" in (
        done.stdout
    )
    # locust's failure table names what failed, per protocol and predictor
    assert "POST infer [stable]: HTTP 404" in done.stderr
    assert "grpc infer [stable]: NOT_FOUND: Model no-such-model" in done.stderr


def test_any_ingress_by_url_with_the_weights_given(load_stack: Stack, tmp_path: Path) -> None:
    state = load_stack.state
    done = run(
        ["-m", "serving.cli", "loadtest", "--target", state["seldonUrl"],
         "--grpc-target", state["grpcTarget"], "--weights", "stable=70,canary=30",
         "--values", str(values_file(tmp_path, SANE_SLO)), "--out", str(tmp_path / "reports"),
         "--duration", "4", "--users", "4", "--rps", "80"]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"against {state['seldonUrl']} {state['grpcTarget']}" in done.stdout
    (report_dir,) = (tmp_path / "reports").iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["weightsSource"] == "--weights" and summary["splitWithinBounds"]
    assert not (report_dir / "replicas.csv").exists()  # no replica source for a bare URL


def test_cluster_mode_reads_the_weights_from_the_seldondeployment_and_follows_its_hpas(
    load_stack: Stack, apiserver: FakeApiServer, tmp_path: Path
) -> None:
    """The --cluster path end to end, with the in-process API server playing the cluster and the
    local stack playing its ingress."""
    apiserver.put({
        "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
        "metadata": {"name": "breast-cancer", "namespace": "models"},
        "spec": {"predictors": [{"name": "stable", "traffic": 70}, {"name": "canary", "traffic": 30}]},
    })  # fmt: skip
    apiserver.put(hpa("breast-cancer-stable-0-breast-cancer", 2, 3))
    done = run(
        ["-m", "serving.cli", "loadtest", "--target", load_stack.seldon_url, "--cluster",
         "--kubeconfig", str(apiserver.write_kubeconfig(tmp_path / "kubeconfig")),
         "--values", str(values_file(tmp_path, SANE_SLO)), "--out", str(tmp_path / "reports"),
         "--duration", "4", "--users", "4", "--rps", "80"]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "weights stable=70,canary=30 from SeldonDeployment models/breast-cancer" in done.stdout
    (report_dir,) = (tmp_path / "reports").iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["weights"] == {"stable": 70.0, "canary": 30.0}
    assert summary["splitWithinBounds"]
    with (report_dir / "replicas.csv").open() as f:
        assert {(r["predictor"], r["replicas"], r["desired"]) for r in csv.DictReader(f)} == {
            ("stable", "2", "3")
        }
    assert (report_dir / "replicas.png").exists()

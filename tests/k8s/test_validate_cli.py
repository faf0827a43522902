"""`serving validate` runs the same checks on a values file or on rendered manifests."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from serving.cli import main
from serving.k8s import manifests

from .conftest import VALUES, write_values


def run(*args: str):
    return CliRunner().invoke(main, ["validate", *args])


def test_the_chart_values_pass_every_engine(needs_crd: Path) -> None:
    result = run(str(VALUES))
    assert result.exit_code == 0, result.output
    for check in (
        "serving.spec",
        "values.schema.json, validateValues",
        "helm lint --strict",
        "OpenAPI schemas",
        "SeldonDeployment CRD openAPIV3Schema",
        "Seldon operator webhook rules (ValidateSeldonDeployment, v1.18.2",
    ):
        assert check in result.output


def test_the_generated_manifests_pass(needs_crd: Path) -> None:
    result = run(str(manifests.MANIFESTS_DIR))
    assert result.exit_code == 0, result.output
    assert "SeldonDeployment/breast-cancer" in result.output


def test_a_bad_values_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    values["predictors"][1]["traffic"] = 30
    result = run(str(write_values(tmp_path, values)))
    assert result.exit_code == 2
    assert "predictors[].traffic: non-shadow traffic must sum to 100" in result.output
    assert "stable 90 + canary 30 = 120" in result.output


def test_a_manifest_with_an_unknown_field_is_refused_naming_the_path(
    tmp_path: Path, needs_crd: Path
) -> None:
    docs = list(yaml.safe_load_all((manifests.MANIFESTS_DIR / manifests.MANIFEST_FILE).read_text()))
    sdep = next(d for d in docs if d and d["kind"] == "SeldonDeployment")
    sdep["spec"]["predictors"][0]["graph"]["modelURI"] = "pvc://typo"
    sdep["spec"]["predictors"][1]["traffic"] = 20
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if d]))
    result = run(str(path))
    assert result.exit_code == 2
    assert (
        "SeldonDeployment/breast-cancer: spec.predictors[0].graph: unknown field(s) ['modelURI']"
        in result.output
    )
    assert (
        "SeldonDeployment/breast-cancer: spec.predictors[].traffic: the Seldon operator webhook "
        'refuses it (spec: Invalid value: "stable": Traffic must sum to 100 for multiple '
        "predictors); non-shadow traffic is stable 90 + canary 20 = 110" in result.output
    )


def test_a_manifest_the_operator_webhook_refuses_is_refused_in_its_words(
    tmp_path: Path, needs_crd: Path
) -> None:
    docs = [d for d in yaml.safe_load_all(manifests.MANIFESTS_DIR.joinpath(
        manifests.MANIFEST_FILE).read_text()) if d]
    sdep = next(d for d in docs if d["kind"] == "SeldonDeployment")
    sdep["spec"]["protocol"] = "v9"
    path = tmp_path / "v9.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = run(str(path))
    assert result.exit_code == 2, result.output
    assert (
        "SeldonDeployment/breast-cancer: spec.protocol: the Seldon operator webhook refuses it "
        '(spec: Invalid value: "v9": Invalid protocol); set it to one of seldon, tensorflow, '
        "kfserving, v2" in result.output
    )


def test_a_broken_built_in_object_is_refused(tmp_path: Path) -> None:
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "models"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "protocl": "TCP"}]}]},
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    result = run(str(path))
    assert result.exit_code == 2
    assert (
        "NetworkPolicy/p: spec.ingress[0].ports[0]: unknown field(s) ['protocl']" in result.output
    )


def test_monitors_are_checked_explicitly(tmp_path: Path) -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "m", "namespace": "models"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "podMetricsEndpoints": [{"port": "metrics", "intervall": "15s"}],
        },
    }
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(monitor))
    result = run(str(path))
    assert result.exit_code == 2
    assert (
        "PodMonitor/m: spec.podMetricsEndpoints[0]: unknown field(s) ['intervall']" in result.output
    )

"""manifests/ is the chart rendered with its defaults, says it is generated, and is never stale."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from serving.cli import main
from serving.k8s import manifests


def test_generated_files_are_up_to_date() -> None:
    stale = manifests.stale_files()
    assert not stale, f"stale generated files {stale}: run 'make manifests' and commit the result"


def test_the_manifest_says_it_is_generated_and_how_to_regenerate_it() -> None:
    text = (manifests.MANIFESTS_DIR / manifests.MANIFEST_FILE).read_text()
    first = text.splitlines()[0]
    assert "GENERATED" in first and "DO NOT EDIT" in first and "make manifests" in first


def test_the_manifest_is_kubectl_appliable_and_leaves_the_helm_test_out() -> None:
    docs = [
        d
        for d in yaml.safe_load_all((manifests.MANIFESTS_DIR / manifests.MANIFEST_FILE).read_text())
        if d
    ]
    assert [d["kind"] for d in docs] == ["NetworkPolicy", "NetworkPolicy", "ConfigMap",
                                         "SeldonDeployment", "Deployment", "Service"]
    assert all(d["metadata"]["namespace"] == "models" for d in docs)
    assert not any("helm.sh/hook" in (d["metadata"].get("annotations") or {}) for d in docs)


def test_a_change_to_the_chart_makes_the_manifests_stale(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    out.mkdir()
    (out / manifests.MANIFEST_FILE).write_text(manifests.manifest_text() + "# edited by hand\n")
    assert out / manifests.MANIFEST_FILE in manifests.stale_files(out_dir=out)


def test_serving_manifests_check_reports_freshness() -> None:
    result = CliRunner().invoke(main, ["manifests", "--check"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output

"""Training gives reproducible, self-describing MLServer model folders."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
from click.testing import CliRunner

from serving import artifacts, dataset, training
from serving.cli import main
from serving.k8s.chart import CHART_DIR
from serving.spec import load_spec


def test_two_runs_give_byte_identical_artifacts(tmp_path: Path) -> None:
    training.train_all(tmp_path / "a")
    training.train_all(tmp_path / "b")
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert files_a == files_b
    compiled = [m for m in artifacts.list_versions(tmp_path / "a") if m.compiled.file]  # type: ignore[union-attr]
    assert len(files_a) == 3 * len(training.RECIPES) + len(compiled)  # model.onnx included
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_at_least_stable_canary_and_shadow_candidates_with_different_estimators(
    models_root: Path,
) -> None:
    metas = artifacts.list_versions(models_root)
    assert [m.version for m in metas][:3] == ["v1", "v2", "v3"]
    assert len({m.estimator for m in metas}) == len(metas)
    for m in metas[:3]:
        assert m.metrics["accuracy"] > 0.9, m


def test_model_settings_declare_runtime_and_named_tensors(models_root: Path) -> None:
    settings = json.loads((models_root / "breast-cancer/v2/model-settings.json").read_text())
    assert settings["name"] == "breast-cancer"
    assert settings["implementation"] == "serving.runtime.VerifiedSKLearnModel"
    assert settings["parameters"] == {"uri": "./model.joblib", "version": "v2"}
    assert settings["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    assert [o["name"] for o in settings["outputs"]] == ["predict", "predict_proba"]


def test_metadata_records_checksum_dataset_libraries_metrics_and_params(models_root: Path) -> None:
    meta = artifacts.read_metadata(models_root / "breast-cancer/v1")
    assert meta.artifact.sha256 == artifacts.sha256_file(
        models_root / "breast-cancer/v1/model.joblib"
    )
    assert meta.dataset.fingerprint == dataset.fingerprint(dataset.load())
    assert meta.dataset.n_train + meta.dataset.n_test == 569
    assert set(meta.libraries) >= {"scikit-learn", "numpy", "joblib", "python"}
    assert set(meta.metrics) == {"accuracy", "f1", "roc_auc"}
    assert meta.params["logisticregression__max_iter"] == 1000


def test_artifact_predicts_like_recorded_hold_out_accuracy(models_root: Path) -> None:
    data = dataset.load()
    model = joblib.load(models_root / "breast-cancer/v3/model.joblib")
    accuracy = float((model.predict(data.x_test) == data.y_test).mean())
    assert (
        round(accuracy, 6)
        == artifacts.read_metadata(models_root / "breast-cancer/v3").metrics["accuracy"]
    )


def test_cli_train_and_models_list_versions(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out", str(tmp_path), "--version", "v1"])
    assert result.exit_code == 0, result.output
    assert "breast-cancer/v1" in result.output
    listed = runner.invoke(main, ["models", "--models", str(tmp_path)])
    assert listed.exit_code == 0
    assert "breast-cancer/v1" in listed.output and " ok" in listed.output


def test_cli_train_unknown_version_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--version", "v9"])
    assert result.exit_code != 0
    assert "unknown version" in result.output and "v1" in result.output


def test_the_committed_digests_are_those_of_a_fresh_training(tmp_path: Path) -> None:
    # The values file binds each version to its artifact; training is deterministic, so the
    # committed digests must be what anyone gets (else: serving train --record-digests).
    committed = load_spec(CHART_DIR / "values.yaml").model.artifacts
    trained = artifacts.spec_digests(training.train_all(tmp_path))  # model.onnx's too
    assert committed == trained


def test_cli_train_records_the_digests_in_a_values_file_keeping_its_comments(
    tmp_path: Path,
) -> None:
    values = tmp_path / "values.yaml"
    text = (CHART_DIR / "values.yaml").read_text()
    values.write_text(text.replace("  artifacts:\n    v1: ", "  artifacts:\n    v0: \"" + "0" * 64
                                   + "\"\n    v1: ").replace("d41176b2", "00000000"))
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "m"), "--version", "v1",
                                       "--record-digests", str(values)])
    assert result.exit_code == 0, result.output
    assert "changed v1; review that change" in result.output
    recorded = load_spec(values).model.artifacts
    assert recorded["v1"] == artifacts.sha256_file(tmp_path / "m/breast-cancer/v1/model.joblib")
    assert recorded["v0"] == "0" * 64  # versions not trained now are kept
    assert values.read_text().replace("    v0: \"" + "0" * 64 + "\"\n", "") == text
    again = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "m"), "--version", "v1",
                                      "--record-digests", str(values)])
    assert "unchanged" in again.output


def test_cli_models_checks_against_the_specs_digests_and_fails_on_a_repickled_model(
    repickled_copy: Path,
) -> None:
    # a re-pickled model with a metadata.json that matches it passes the folder's own check
    assert artifacts.read_metadata(repickled_copy).artifact.sha256 == artifacts.sha256_file(
        repickled_copy / "model.joblib")
    result = CliRunner().invoke(main, ["models", "--models", str(repickled_copy.parents[1])])
    assert result.exit_code == 3, result.output
    assert "breast-cancer/v1" in result.output and "FAILED: refusing to load" in result.output
    assert "the deployment spec expects" in result.output
    assert "1 of 1 versions" in result.output


def test_cli_models_fails_on_a_version_the_spec_has_no_digest_for(
    models_root: Path, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("predictors: [{name: stable, version: v1}]\n")
    result = CliRunner().invoke(main, ["models", "--models", str(models_root), "--values",
                                       str(values)])
    assert result.exit_code == 3
    assert result.output.count("FAILED: refusing to load") == len(training.RECIPES)
    assert "no expected sha256 for version v1" in result.output

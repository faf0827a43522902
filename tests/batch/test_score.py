"""`serving batch score` in-process: the real CLI, real files, the model loaded only after the
runtime's checks against the spec's digests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from serving import artifacts
from serving.batch import inputs
from serving.batch.errors import BatchError
from serving.batch.run import Options, score
from serving.batch.scorers import in_process_from_spec
from serving.batch.summary import Summary

from ..conftest import MODEL
from .conftest import frame, read_parts, run_cli, write_spec


def score_with(spec: Path, models_root: Path, source: str, out: str, **options: Any) -> Summary:
    scorer, features, key = in_process_from_spec(spec, models_root)
    return score(source, out, scorer, features, key, Options(progress=False, **options))


def expected(models_root: Path, spec_file: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from serving.spec import load_spec

    _, model = artifacts.load_verified(models_root / MODEL / "v1",
                                       load_spec(spec_file).model.artifacts)
    return model.predict(x), model.predict_proba(x)


def test_in_process_predictions_carry_id_row_version_predictor_and_batch(
    holdout: Path, spec_file: Path, models_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = run_cli(str(holdout), "--out", str(out), "--values", str(spec_file),
                   "--id-column", "claim_id", "--chunk-rows", "50")
    assert done.returncode == 0, done.stderr
    assert "143 rows scored, 0 rejected" in done.stdout and "features by name" in done.stdout
    got = read_parts(out)
    df = frame()
    labels, proba = expected(models_root, spec_file, df.drop(columns="claim_id").to_numpy())
    assert got["row"].tolist() == list(range(143))
    assert got["id"].tolist() == df["claim_id"].tolist()
    assert np.array_equal(got["prediction"].to_numpy(), labels)
    assert np.allclose(got[["proba_0", "proba_1"]].to_numpy(), proba, rtol=0, atol=1e-12)
    assert set(got["model_version"]) == {"v1"} and set(got["predictor"]) == {"in-process"}
    assert got["batch_id"].nunique() == 1 and str(got["scored_at"].dtype).startswith("datetime")
    assert len(list(out.glob("part-*.parquet"))) == 3  # 143 rows in chunks of 50


def test_csv_by_position_and_sqlite_outputs_hold_the_same_predictions(
    holdout: Path, spec_file: Path, models_root: Path, tmp_path: Path
) -> None:
    headerless = tmp_path / "in.csv"
    frame().drop(columns="claim_id").to_csv(headerless, index=False, header=False)
    csv_out, db = tmp_path / "csv", tmp_path / "p.db"
    by_position = score_with(spec_file, models_root, str(headerless), str(csv_out),
                             header=False, fmt="csv", chunk_rows=60)
    assert by_position.columns_by == "position"
    score_with(spec_file, models_root, str(holdout), f"sqlite:///{db}", table="scores",
               state_dir=tmp_path / "state", chunk_rows=60)
    from_csv = pd.concat(pd.read_csv(p) for p in sorted(csv_out.glob("part-*.csv")))
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        from_sql = pd.read_sql("select * from scores order by row", conn)
    assert len(from_csv) == len(from_sql) == 143
    assert from_csv["prediction"].tolist() == from_sql["prediction"].tolist()
    assert np.allclose(from_csv["proba_1"], from_sql["proba_1"])
    assert set(from_sql["chunk"]) == {"00000-000000", "00000-000001", "00000-000002"}
    # a chunk done again (a kill between commit and manifest) replaces its rows, never doubles
    again = score_with(spec_file, models_root, str(holdout), f"sqlite:///{db}", table="scores",
                       state_dir=tmp_path / "state2", chunk_rows=60,
                       batch_id=str(from_sql["batch_id"][0]))
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        assert pd.read_sql("select count(*) as n from scores", conn)["n"][0] == 143
    assert again.rows_scored == 143


def test_bad_rows_go_to_rejects_with_reason_and_row_and_exit_code_5(
    spec_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    frame().to_csv(path, index=False)
    lines = path.read_text().splitlines()  # lines[0] is the header: data row r is lines[r + 1]
    lines[3] += ",99"
    lines[5] = ",".join(lines[5].split(",")[:10])
    for line, col, value in [(7, 4, "abc"), (9, 2, ""), (11, 3, "nan"), (13, 5, "inf")]:
        fields = lines[line].split(",")
        fields[col] = value
        lines[line] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    done = run_cli(str(path), "--out", str(out), "--values", str(spec_file), "--id-column",
                   "claim_id", "--chunk-rows", "5")
    assert done.returncode == 5, done.stderr
    assert "137 rows scored, 6 rejected" in done.stdout
    assert "6 rows rejected" in done.stderr
    rejects = pd.read_csv(out / "_rejects.csv")
    assert rejects["row"].tolist() == [2, 4, 6, 8, 10, 12]
    reasons = rejects["reason"].tolist()
    assert reasons[0] == "32 fields, expected 31" and reasons[1] == "10 fields, expected 31"
    assert "'mean area': not a number: 'abc'" in reasons[2]
    assert "'mean texture': empty" in reasons[3]
    assert "not a finite number" in reasons[4] and "not a finite number" in reasons[5]
    got = read_parts(out)
    assert sorted(got["row"]) == sorted(set(range(143)) - {2, 4, 6, 8, 10, 12})
    assert got.set_index("row").loc[3, "id"] == "c3"  # ids stay with their rows after a reject


def test_a_tampered_artifact_is_refused_and_nothing_is_written(
    holdout: Path, models_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_root / MODEL / "v1", root / MODEL / "v1")
    with (root / MODEL / "v1" / "model.joblib").open("ab") as f:
        f.write(b"\x00tampered")
    spec = write_spec(tmp_path / "values.yaml", root)
    out = tmp_path / "out"
    done = run_cli(str(holdout), "--out", str(out), "--values", str(spec))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "sha256" in done.stderr and "model.joblib" in done.stderr
    assert not out.exists()


def test_a_rerun_resumes_and_other_arguments_are_refused(
    holdout: Path, spec_file: Path, models_root: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    score_with(spec_file, models_root, str(holdout), out, chunk_rows=40)
    again = score_with(spec_file, models_root, str(holdout), out, chunk_rows=40)
    assert (again.rows_this_run, again.chunks_resumed, again.chunks) == (0, 4, 4)
    with pytest.raises(BatchError, match="changed: chunkRows"):
        score_with(spec_file, models_root, str(holdout), out, chunk_rows=41)
    assert len(read_parts(Path(out))) == 143
    fresh = score_with(spec_file, models_root, str(holdout), out, chunk_rows=41, overwrite=True)
    assert fresh.chunks == 4 and fresh.chunks_resumed == 0 and len(read_parts(Path(out))) == 143


def test_a_folder_or_glob_of_files_is_one_input(spec_file: Path, tmp_path: Path,
                                                 models_root: Path) -> None:
    df = frame()
    folder = tmp_path / "in"
    folder.mkdir()
    df.iloc[:100].to_parquet(folder / "a.parquet")
    df.iloc[100:].to_csv(folder / "b.csv", index=False)
    scorer, features, key = in_process_from_spec(spec_file, models_root)
    summary = score(str(folder), str(tmp_path / "out"), scorer, features, key,
                    Options(progress=False, id_column="claim_id"))
    assert summary.rows_scored == 143
    got = read_parts(tmp_path / "out")
    assert got.groupby("file").size().to_dict() == {str(folder / "a.parquet"): 100,
                                                    str(folder / "b.csv"): 43}
    assert sorted(got["id"]) == sorted(df["claim_id"])
    assert [p.name for p in inputs.resolve(str(folder / "*.csv"))] == ["b.csv"]


def test_feature_columns_are_found_by_name_or_position_or_the_error_says_what_is_missing(
) -> None:
    features = [f"f{i}" for i in range(3)]
    assert inputs.feature_columns(["id", "f2", "f0", "f1"], features, "id", "auto", "x") == (
        ["f0", "f1", "f2"], "name")
    assert inputs.feature_columns(["id", "a", "b", "c"], features, "id", "auto", "x") == (
        ["a", "b", "c"], "position")
    with pytest.raises(BatchError, match="missing: f2"):
        inputs.feature_columns(["f0", "f1", "z"], features, None, "auto", "x")
    with pytest.raises(BatchError, match="no id column 'key'"):
        inputs.feature_columns(["f0", "f1", "f2"], features, "key", "auto", "x")
    with pytest.raises(BatchError, match="--columns position"):
        inputs.feature_columns(["a", "b", "c", "d"], features, None, "auto", "x")

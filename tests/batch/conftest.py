"""Fixtures for batch scoring: a deployment spec naming the artifacts trained for this session,
the hold-out set as Parquet/CSV input files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from serving import dataset

from ..conftest import TRAINED_DIGESTS

SERVING = [sys.executable, "-m", "serving.cli"]


def write_spec(path: Path, models_root: Path, digests: dict[str, str] | None = None,
               **extra: Any) -> Path:
    values = {
        "model": {"localRepository": str(models_root), "artifacts": digests or TRAINED_DIGESTS},
        "predictors": [{"name": "stable", "version": "v1", "traffic": 100}],
        **extra,
    }
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def spec_file(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec") / "values.yaml", models_root)


def frame(copies: int = 1) -> pd.DataFrame:
    """The hold-out rows (`copies` times), with an id column first."""
    data = dataset.load()
    x = np.concatenate([data.x_test] * copies)
    df = pd.DataFrame(x, columns=data.feature_names)
    df.insert(0, "claim_id", [f"c{i}" for i in range(len(df))])
    return df


@pytest.fixture(scope="session")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "holdout.parquet"
    frame().to_parquet(path)
    return path


def run_cli(*args: str, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVING, "batch", "score", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def read_parts(folder: Path) -> pd.DataFrame:
    """A part-file output as one frame, in input order."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(folder), format="parquet").to_table()
    return table.to_pandas().sort_values(["file", "row"]).reset_index(drop=True)

"""The Metaflow flow end to end on this machine: real Metaflow, its local datastore in the test's
folder, nothing under HOME, the same predictions as `serving batch score`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from serving.batch.flow_local import run_flow

from .conftest import read_parts


def test_the_flow_scores_every_row_once_across_its_shards(
    holdout: Path, spec_file: Path, models_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    out = tmp_path / "predictions"
    done = run_flow(str(holdout), out, tmp_path / "metaflow",
                    ["--values", str(spec_file), "--models", str(models_root),
                     "--id-column", "claim_id", "--chunk-rows", "50", "--shards", "2"],
                    capture=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"predictions: {out}" in done.stdout + done.stderr
    for name in ("start", "load_model", "score", "join", "end"):
        assert f"/{name}/" in done.stderr + done.stdout
    got = read_parts(out)
    assert got["row"].tolist() == list(range(143))  # 3 chunks over 2 shards, each once
    assert got["batch_id"].nunique() == 1 and got["batch_id"][0].startswith("BatchScoreFlow-")
    assert sorted(p.name for p in (out / "_batch").glob("manifest-*")) == [
        f"manifest-{i}-of-2.jsonl" for i in range(2)]
    # the same predictions as the in-process command path
    from serving.batch.run import Options, score
    from serving.batch.scorers import in_process_from_spec

    scorer, features, key = in_process_from_spec(spec_file, models_root)
    score(str(holdout), str(tmp_path / "cli"), scorer, features, key, Options(progress=False))
    assert np.array_equal(got["prediction"], read_parts(tmp_path / "cli")["prediction"])
    assert os.listdir(home) == []  # Metaflow wrote nothing under HOME
    assert (tmp_path / "metaflow" / ".metaflow" / "BatchScoreFlow").is_dir()

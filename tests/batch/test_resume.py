"""kill -9 mid-run, then the same command again: every input row exactly once, no duplicate and
no missing row (Parquet part files and SQLite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from .conftest import frame, read_parts

# the `serving batch` group itself, without the rest of the CLI (starts faster on a busy machine)
BATCH = [sys.executable, "-c", "import sys; from serving.batch.commands import batch; "
         "batch(['score', *sys.argv[1:]], prog_name='serving batch')"]
COPIES = 150  # 21,450 rows in chunks of 100: a few hundred chunks, a second or two of work


def manifest_lines(state: Path) -> int:
    path = state / "manifest.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_after(args: list[str], state: Path, chunks: int, timeout: float = 120) -> int:
    """Start the command, SIGKILL it once `chunks` more chunks are in its manifest; returns
    the number of manifest lines it had. Fails if the run ended before it could be killed."""
    before = manifest_lines(state)
    process = subprocess.Popen([*BATCH, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while manifest_lines(state) < before + chunks:
            assert process.poll() is None, f"ended before the kill: {process.stderr.read()!r}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return manifest_lines(state)


@pytest.mark.parametrize("output", ["parquet", "sqlite"])
def test_killed_runs_resume_to_exactly_the_input_rows(
    output: str, spec_file: Path, tmp_path: Path
) -> None:
    source = tmp_path / "input.parquet"
    df = frame(COPIES)
    df.to_parquet(source)
    if output == "parquet":
        out, state = str(tmp_path / "out"), tmp_path / "out" / "_batch"
    else:
        out, state = f"sqlite:///{tmp_path / 'p.db'}", tmp_path / "state"
    args = [str(source), "--out", out, "--values", str(spec_file), "--id-column", "claim_id",
            "--chunk-rows", "100", "--state-dir", str(state), "--quiet"]
    kills = (3, 40) if output == "parquet" else (25,)
    seen = [kill_after(args, state, chunks) for chunks in kills]
    assert seen == sorted(seen) and seen[-1] < 1 + len(df) // 100  # killed mid-run, progressing
    final = subprocess.run([*BATCH, *args], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert f"{len(df)} rows scored, 0 rejected" in final.stdout
    if output == "parquet":
        got = read_parts(Path(out))
        assert not list(Path(out).glob(".part-*"))  # a killed write's temporary file is gone
    else:
        with sa.create_engine(out).connect() as conn:
            got = pd.read_sql("select * from predictions order by row", conn)
    assert len(got) == len(df)
    assert got["row"].tolist() == list(range(len(df)))  # none missing, none twice
    assert got["id"].tolist() == df["claim_id"].tolist()
    assert got["batch_id"].nunique() == 1  # the resumed runs kept the batch id
    # the same predictions as the hold-out set scored once, repeated
    once = got.iloc[:143]["prediction"].to_numpy()
    assert np.array_equal(got["prediction"].to_numpy(), np.tile(once, COPIES))

"""Run the Metaflow flow (flow.py) on this machine with no cloud configuration, its metadata and
datastore under a folder of the run's own (never ~/.metaflow or ~/.metaflowconfig).

`python -m serving.batch.flow_local` (what `make batch` runs) scores the hold-out set of
serving.dataset and prints where the predictions are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

FLOW = Path(__file__).with_name("flow.py")


def local_env(workdir: Path) -> dict[str, str]:
    """The environment that keeps Metaflow local and inside `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    return {**env, "METAFLOW_HOME": str(workdir / "home"),
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(workdir),
            "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_USER": env.get("USER") or "serving", "USERNAME": "serving"}


def run_flow(source: str, out: Path, workdir: Path, args: Sequence[str] = (),
             capture: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(FLOW), "--no-pylint", "run", "--input", source,
               "--out", str(out), "--max-workers", "2", *args]
    return subprocess.run(command, env=local_env(workdir), text=True, cwd=workdir,
                          capture_output=capture)


def write_holdout(path: Path) -> Path:
    """The hold-out set (the rows the models were evaluated on) as Parquet, with an id column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..dataset import load

    data = load()
    columns: dict[str, Any] = {"claim_id": [f"holdout-{i}" for i in range(len(data.x_test))]}
    columns |= {name: data.x_test[:, j] for j, name in enumerate(data.feature_names)}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("reports/batch"),
              show_default=True, help="Holds the input, the predictions and Metaflow's files.")
@click.option("--values", default="charts/seldon-model/values.yaml", show_default=True)
@click.option("--models", default="models", show_default=True)
def main(workdir: Path, values: str, models: str) -> None:
    """Score the hold-out set with the Metaflow flow, locally."""
    workdir = workdir.resolve()
    source = write_holdout(workdir / "holdout.parquet")
    out = workdir / "predictions" / time.strftime("%Y%m%dT%H%M%S")  # one folder per batch
    done = run_flow(str(source), out, workdir / "metaflow",
                    ["--values", str(Path(values).resolve()), "--models",
                     str(Path(models).resolve()), "--id-column", "claim_id",
                     "--chunk-rows", "50"])  # 143 rows: 3 chunks, so both shards have work
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    click.echo(f"predictions: {out}  (Parquet part files; rejects in {out / '_rejects.csv'})")


if __name__ == "__main__":
    main()

"""A real Prometheus (Debian's package) scraping given targets every second: one helper for every
test folder that judges figures through PromQL (comparator, rollouts, console, cluster rollouts)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from serving.server import free_port

PROMETHEUS = shutil.which("prometheus")


@contextlib.contextmanager
def prometheus(folder: Path, jobs: dict[str, str], labels: dict[str, str] | None = None
               ) -> Iterator[str]:
    """`jobs`: job name -> host:port. `labels`: added to every target, as a PodMonitor's
    relabelling adds namespace and pod on a cluster."""
    assert PROMETHEUS is not None, "the 'prometheus' server is not installed"
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [
            {"targets": [target], "labels": labels or {}}]} for job, target in jobs.items()],
    }))
    port = free_port()
    log = folder / "prometheus.log"
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # Prometheus hands new targets to its scrapers only every few seconds: wait for them.
        for job in jobs:
            while not httpx.get(f"{url}/api/v1/query", params={"query": f'up{{job="{job}"}} == 1'},
                                timeout=2).json()["data"]["result"]:
                assert time.monotonic() < deadline, f"Prometheus never scraped {job}"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)

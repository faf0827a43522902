"""The comparator as a real process on a free port (one per settings, shared by the session)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.comparator.matching import Settings
from serving.comparator.process import ComparatorProcess
from serving.server import free_port

Start = Callable[..., ComparatorProcess]


@pytest.fixture(scope="session")
def start_comparator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    started: dict[tuple[float, int, tuple[str, ...]], ComparatorProcess] = {}

    def start(ttl: float = 30.0, max_pending: int = 10_000,
              deployments: tuple[str, ...] = ()) -> ComparatorProcess:
        key = (ttl, max_pending, deployments)
        if key not in started:
            log = Path(tmp_path_factory.mktemp("comparator")) / "comparator.log"
            process = ComparatorProcess(free_port(), Settings(
                ttl_seconds=ttl, max_pending=max_pending, deployments=frozenset(deployments)),
                log=log)
            process.start()
            started[key] = process
        return started[key]

    yield start
    for process in started.values():
        process.stop()


@pytest.fixture(scope="session")
def comparator(start_comparator: Start) -> ComparatorProcess:
    """Any deployment taken; each test uses its own deployment name (counters are per name)."""
    return start_comparator()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples(url).items()
               if n == name and set(labels.items()) <= set(ls))

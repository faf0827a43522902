"""One real local stack (`serving up`) for the console's tests, with a light steady load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import dataset
from serving.background_load import BackgroundLoad
from serving.console.config import ConsoleConfig

from ..router.conftest import Stack, start_stack, stop_stack

BASELINE = [
    {"name": "stable", "version": "v1", "traffic": 100},
    # the naive baseline as the shadow: it disagrees with stable on about a third of rows
    {"name": "shadow", "version": "v4", "shadow": True, "traffic": 100},
]
VALUES = {
    "deployment": {"name": "breast-cancer", "namespace": "models"},
    "predictors": BASELINE,
    # Steps a person can watch in a few seconds; analysis lenient so that a slow, loaded test
    # machine does not roll the candidate back in the middle of the test.
    "rollout": {"candidatePredictor": "canary",
                "steps": [{"setWeight": 20}, {"pause": "5s"}, {"setWeight": 50},
                          {"pause": {}}],
                "analysis": {"intervalSeconds": 1, "minRequests": 1000,
                             "maxErrorRateIncrease": 0.5, "maxP99Ratio": 20.0,
                             "failureLimit": 10}},
}


@pytest.fixture(scope="package")
def console_stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Stack]:
    stack = start_stack(VALUES, tmp_path_factory.mktemp("console-stack"), models_root)
    load = BackgroundLoad(stack.infer_url, threads=1, pause_s=0.02).start()
    yield stack
    load.stop()
    stop_stack(stack)


def config_of(stack: Stack, **changes: object) -> ConsoleConfig:
    fields: dict[str, Any] = {"values_path": str(stack.state_dir.parent / "values.yaml"),
                              "state_dir": stack.state_dir, "refresh_seconds": 1.0, **changes}
    return ConsoleConfig(**fields)


@pytest.fixture
def at_baseline(console_stack: Stack) -> Stack:
    """The stack at its baseline predictors, with no rollout on record."""
    return console_stack.reset(BASELINE)


#: a CSV header of the features' names and one hold-out row
NAMES_ROW = ",".join(dataset.load().feature_names) + "\n" + ",".join(
    str(v) for v in dataset.load().x_test[0])

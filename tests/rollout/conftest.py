"""A local stack for rollouts, and a steady background load that records what callers saw."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.background_load import BackgroundLoad

from ..router.conftest import Stack, start_stack, stop_stack

BASELINE = [
    {"name": "stable", "version": "v1", "traffic": 100},
    {"name": "shadow", "version": "v3", "shadow": True, "traffic": 50},
]
FAST_ANALYSIS = {"intervalSeconds": 1, "minRequests": 60, "maxErrorRateIncrease": 0.05,
                 "maxP99Ratio": 2.0, "minAgreement": 0.85, "failureLimit": 2}


Load = BackgroundLoad

@pytest.fixture(scope="module")
def rollout_stack(models_root: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Stack]:
    values = {"deployment": {"name": "breast-cancer", "namespace": "models"},
              "predictors": BASELINE}
    stack = start_stack(values, tmp_path_factory.mktemp("rollout-stack"), models_root)
    yield stack
    stop_stack(stack)


@pytest.fixture
def fresh_stack(rollout_stack: Stack) -> Stack:
    """The stack back at its baseline predictors, with no rollout on record."""
    return rollout_stack.reset(BASELINE)

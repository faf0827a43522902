"""A replica marked dead after one connection error comes back once it answers again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from serving.router.replicas import Replica
from serving.router.stack import LocalStack
from serving.server import MLServerProcess
from serving.spec import parse_spec


def test_a_replica_that_answers_its_probe_is_back_in_rotation(
    mlserver_v1: MLServerProcess, tmp_path: Path
) -> None:
    spec = parse_spec({"predictors": [{"name": "stable", "version": "v1"}]})
    stack = LocalStack(spec, tmp_path, tmp_path)
    replica = Replica("stable", "v1", 0, mlserver_v1, alive=False)  # as after a reset connection
    asyncio.run(stack._probe(replica))
    assert replica.alive


def test_a_replica_that_does_not_answer_stays_out(mlserver_v1: MLServerProcess,
                                                   tmp_path: Path) -> None:
    spec = parse_spec({"predictors": [{"name": "stable", "version": "v1"}]})
    stack = LocalStack(spec, tmp_path, tmp_path)
    silent = MLServerProcess(tmp_path, mlserver_v1.settings.model_copy(update={"http_port": 9}))
    replica = Replica("stable", "v1", 0, silent, alive=False)
    asyncio.run(stack._probe(replica))
    assert not replica.alive

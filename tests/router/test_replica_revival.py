"""Health checks: failed ones in a row take a replica out of rotation, a 200 brings it back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from serving.router.replicas import PRIMARY_HEALTH, Replica
from serving.router.stack import LocalStack
from serving.server import MLServerProcess, ServerSettings
from serving.spec import parse_spec


def a_stack(tmp_path: Path) -> LocalStack:
    return LocalStack(parse_spec({"predictors": [{"name": "stable", "version": "v1"}]}),
                      tmp_path, tmp_path)


def check(stack: LocalStack, replica: Replica) -> None:
    async def once() -> None:
        async with aiohttp.ClientSession() as session:
            await stack._check(session, replica, PRIMARY_HEALTH)

    asyncio.run(once())


def test_a_replica_that_answers_its_check_is_back_in_rotation(
    mlserver_v1: MLServerProcess, tmp_path: Path
) -> None:
    replica = Replica("stable", "v1", 0, mlserver_v1, alive=False, failed_checks=5)
    check(a_stack(tmp_path), replica)
    assert replica.alive
    assert replica.failed_checks == 0


def test_a_replica_that_does_not_answer_stays_out(mlserver_v1: MLServerProcess,
                                                   tmp_path: Path) -> None:
    silent = MLServerProcess(tmp_path, mlserver_v1.settings.model_copy(update={"http_port": 9}))
    replica = Replica("stable", "v1", 0, silent, alive=False)
    check(a_stack(tmp_path), replica)
    assert not replica.alive


def test_failed_checks_in_a_row_take_a_replica_out_one_does_not(tmp_path: Path) -> None:
    stack = a_stack(tmp_path)
    replica = Replica("stable", "v1", 0, MLServerProcess(tmp_path, ServerSettings.tuned()),
                      alive=True)

    async def results(*statuses: int | None) -> None:
        for status in statuses:
            await stack._checked(replica, PRIMARY_HEALTH, status)

    asyncio.run(results(None))
    assert replica.alive  # one slow answer is not enough
    asyncio.run(results(200, None))
    assert replica.alive  # a 200 started the count again
    asyncio.run(results(503))
    assert not replica.alive and replica.failed_checks == PRIMARY_HEALTH.failures
    asyncio.run(results(200))
    assert replica.alive and replica.failed_checks == 0

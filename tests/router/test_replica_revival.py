"""Health checks: failed ones in a row take a replica out of rotation (never a predictor's last
live one), a 200 brings it back; only a replica that is silent and not running is killed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from serving.router.replicas import PRIMARY_HEALTH, PredictorPool, Replica
from serving.router.stack import LocalStack
from serving.server import MLServerProcess, ServerSettings, process_cpu
from serving.spec import parse_spec

SPEC = parse_spec({"predictors": [{"name": "stable", "version": "v1", "replicas": 2}]})


def a_stack(tmp_path: Path) -> LocalStack:
    return LocalStack(SPEC, tmp_path, tmp_path)


def pool_of(*replicas: Replica) -> PredictorPool:
    return PredictorPool(SPEC.predictors[0], list(replicas))


def running(tmp_path: Path, alive: bool = True) -> Replica:
    """A replica whose process runs (a sleep), so that it counts as live when alive."""
    server = MLServerProcess(tmp_path, ServerSettings.tuned())
    server.process = subprocess.Popen(["sleep", "60"])
    return Replica("stable", "v1", 0, server, alive=alive)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    pair = (running(tmp_path), running(tmp_path))
    yield pair
    for r in pair:
        assert r.server.process is not None
        r.server.process.kill()
        r.server.process.wait()


def check(stack: LocalStack, replica: Replica) -> None:
    async def once() -> None:
        async with aiohttp.ClientSession() as session:
            await stack._check(session, pool_of(replica), replica, PRIMARY_HEALTH)

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
    assert not replica.alive and replica.failed_checks == 1


def test_failed_checks_in_a_row_take_a_replica_out_one_does_not(
        tmp_path: Path, two: tuple[Replica, Replica]) -> None:
    stack = a_stack(tmp_path)
    replica, other = two
    pool = pool_of(replica, other)

    async def results(*statuses: int | None) -> None:
        for status in statuses:
            await stack._checked(pool, replica, PRIMARY_HEALTH, status)

    asyncio.run(results(None))
    assert replica.alive  # one slow answer is not enough
    asyncio.run(results(200, None))
    assert replica.alive  # a 200 started the count again
    asyncio.run(results(503))
    assert not replica.alive and replica.failed_checks == PRIMARY_HEALTH.failures
    asyncio.run(results(200))
    assert replica.alive and replica.failed_checks == 0


def test_a_predictors_last_live_replica_stays_in_rotation(
        tmp_path: Path, two: tuple[Replica, Replica]) -> None:
    stack = a_stack(tmp_path)
    replica, other = two
    other.alive = False
    pool = pool_of(replica, other)

    async def fail(n: int) -> None:
        for _ in range(n):
            await stack._checked(pool, replica, PRIMARY_HEALTH, None)

    asyncio.run(fail(5))
    assert replica.alive  # slow answers rather than 503s
    other.alive = True
    asyncio.run(fail(1))
    assert not replica.alive  # now another one serves


def silent_since(replica: Replica, seconds: float) -> None:
    replica.failed_checks = PRIMARY_HEALTH.failures
    replica.last_answer = time.monotonic() - seconds


def test_only_a_silent_replica_that_does_not_run_is_hung(
        tmp_path: Path, two: tuple[Replica, Replica]) -> None:
    stack = a_stack(tmp_path)
    idle, stopped = two
    busy = Replica("stable", "v1", 0, MLServerProcess(tmp_path, ServerSettings.tuned()))
    busy.server.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert idle.server.process and stopped.server.process
        stopped.server.process.send_signal(signal.SIGSTOP)
        for r in (idle, stopped, busy):
            silent_since(r, PRIMARY_HEALTH.kill_after + 0.1)
            assert r.server.process is not None
            pid = r.server.process.pid
            sample = process_cpu(pid)
            assert sample is not None
            r.cpu_ticks, r.last_progress = sample[1], time.monotonic() - 5  # CPU flat so far
        now = time.monotonic()

        def hung(r: Replica) -> bool:
            assert r.server.process is not None
            return stack._hung(r, PRIMARY_HEALTH, r.server.process.pid, time.monotonic())

        assert hung(stopped)  # SIGSTOP: state T
        assert hung(idle)  # running, but no CPU for kill_after: as a deadlock looks
        time.sleep(0.3)
        assert not hung(busy)  # busy, using CPU: slow, not hung
        silent_since(busy, PRIMARY_HEALTH.give_up_after)
        assert hung(busy)  # ... until give_up_after
        stack._lagged_at = now  # this process itself was late: nothing is judged hung
        assert not hung(stopped)
        stopped.failed_checks = 1
        stack._lagged_at = 0.0
        assert not hung(stopped)  # fewer failed checks than PRIMARY_HEALTH.failures
    finally:
        busy.server.process.kill()
        busy.server.process.wait()

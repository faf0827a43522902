"""A replica that stops answering (SIGSTOP: its sockets still accept connections) is out of
rotation within 2 s, and no request waits on it much longer than that."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import infer_body, start_stack, stop_stack

pytestmark = pytest.mark.slow
TWO_STABLE = {"predictors": [{"name": "stable", "version": "v1", "traffic": 100, "replicas": 2}]}


def test_a_hung_replica_is_taken_out_of_rotation_and_its_requests_go_elsewhere(
        models_root: Path, tmp_path: Path) -> None:
    stack = start_stack(TWO_STABLE, tmp_path, models_root)
    stop = threading.Event()
    results: list[tuple[float, float, int | str]] = []  # (started, seconds, status)

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    code: int | str = c.post(stack.infer_url, json=infer_body(i)).status_code
                except httpx.HTTPError as e:
                    code = repr(e)
                results.append((started, time.monotonic() - started, code))
                i += 1

    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in clients:
            t.start()
        time.sleep(1)
        victim = stack.replica_pid("stable", 0)
        hung_at = time.monotonic()
        os.kill(victim, signal.SIGSTOP)
        out_after = None
        while time.monotonic() - hung_at < 10:
            replica = stack.status()["predictors"][0]["replicas"][0]
            if not replica["alive"] or replica["pid"] != victim:
                out_after = time.monotonic() - hung_at
                break
            time.sleep(0.05)
        assert out_after is not None and out_after < 2.0, out_after
        time.sleep(4)  # load goes on
        with contextlib.suppress(ProcessLookupError):  # killed and restarted meanwhile, or not
            os.kill(victim, signal.SIGCONT)
        stack.wait_all_live(60)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in clients:
            t.join()
        with contextlib.suppress(ProcessLookupError, UnboundLocalError):
            os.kill(victim, signal.SIGCONT)
        stop_stack(stack)
    since = [r for r in results if r[0] + r[1] >= hung_at]
    codes: dict[int | str, int] = {}
    for _, _, code in since:
        codes[code] = codes.get(code, 0) + 1
    assert codes.keys() == {200}, codes
    slowest = max(seconds for _, seconds, _ in since)
    assert slowest < 2.5, f"a request waited {slowest:.2f}s on the hung replica"
    assert len(since) > 100  # the load kept flowing

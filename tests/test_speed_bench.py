"""serving.bench.speed reads wrk's report right, errors included (a wrk script that fails to
load sends GETs, which a POST-only app answers 405: that must count as errors, not speed)."""

from __future__ import annotations

import pytest

from serving.bench.speed import parse_wrk

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:27111/predict
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.70ms    1.35ms  15.45ms   83.79%
    Req/Sec     6.06k   830.29     7.25k    75.00%
  Latency Distribution
     50%  812.00us
     75%    2.98ms
     90%    4.09ms
     99%    1.20s
  12082 requests in 2.01s, 2.13MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12082
Requests/sec:   6024.57
Transfer/sec:      1.06MB
"""


def test_wrk_figures_units_and_errors_are_read() -> None:
    rps, p50, p99, requests, errors = parse_wrk(WRK_OUTPUT)
    assert rps == 6024.57 and requests == 12082
    assert p50 == pytest.approx(0.812) and p99 == pytest.approx(1200.0)
    assert errors == 12082 + 3
    clean = WRK_OUTPUT.replace("  Non-2xx or 3xx responses: 12082\n", "").replace(
        "read 2, write 0, timeout 1", "read 0, write 0, timeout 0")
    assert parse_wrk(clean)[4] == 0

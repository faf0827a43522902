"""A constant request rate: -u users (each at --rps/-u requests/s) for -t.

locust -f loadtest/locustfile.py,loadtest/shape_constant.py --headless -u 40 -t 60s --rps 200 ...
"""

from __future__ import annotations

from locust import LoadTestShape

from serving.load import shapes


class ConstantRate(LoadTestShape):
    use_common_options = True  # -u is the peak user count, -t the duration (default 60s)

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        o = self.runner.environment.parsed_options
        return shapes.constant(self.get_run_time(), o.num_users or 1, o.run_time or 60)

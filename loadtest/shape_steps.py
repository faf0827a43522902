"""Steps: a quarter of -u users, then half, three quarters, all of them; -t in four equal steps.

locust -f loadtest/locustfile.py,loadtest/shape_steps.py --headless -u 40 -t 60s --rps 200 ...
"""

from __future__ import annotations

from locust import LoadTestShape

from serving.load import shapes


class Steps(LoadTestShape):
    use_common_options = True  # -u is the peak user count, -t the duration (default 60s)

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        o = self.runner.environment.parsed_options
        return shapes.steps(self.get_run_time(), o.num_users or 1, o.run_time or 60)

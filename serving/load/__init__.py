"""Load tests: locust users and shapes (loadtest/), the SLO gate, reports and scaling runs."""

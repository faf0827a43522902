"""Rollouts: step a candidate from mirror to canary to stable, judged on live metrics."""

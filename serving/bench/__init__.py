"""Benchmarks: scripts that print figures (run by `make bench`), not tests."""

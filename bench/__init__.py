"""Benchmarks: run as modules (`python -m bench.vectors`), never collected as tests."""

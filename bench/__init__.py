"""Benchmarks: not tests; each is runnable as `python -m bench.<name>` against the local stack."""

"""Benchmarks: each reports a ratio against the raw client doing the same work in the same run."""

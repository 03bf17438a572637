"""Benchmarks: each reports a ratio against the raw client doing the same work in the same run."""

import ams  # noqa: F401 - before any benchmark imports numpy: AMS's processes use one BLAS thread (ams/__init__.py)

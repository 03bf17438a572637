"""AMS, the Autonomous Memory System: shared settings, auth, observability and the `ams` CLI."""

import os

# One BLAS thread per process unless the operator says otherwise. Every AMS process is one of several on the
# machine (workers, gateways, Kafka, PostgreSQL): OpenBLAS's extra threads spin waiting for work, and with the
# built-in text embedder's matrix products on a busy 2-core machine they made one embedding 3-8x slower.
# Set before numpy is imported (it reads the variable once, when it loads OpenBLAS).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

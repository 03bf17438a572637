"""Prometheus metrics of the projection workers."""

from prometheus_client import Counter, Gauge, Histogram

CHECKPOINT = Gauge("ams_projection_checkpoint", "Last applied offset", ["projection", "partition"])
LAG = Gauge("ams_projection_lag", "Events in the log not yet applied", ["projection", "partition"])
APPLIED = Counter("ams_projection_events_applied", "Events applied", ["projection"])
DEAD_LETTERED = Counter("ams_projection_dead_lettered", "Records sent to the dead-letter topic", ["projection"])
RETRIES = Counter("ams_projection_retries", "Retries after a store was unreachable", ["projection"])
BATCH_SECONDS = Histogram("ams_projection_batch_seconds", "Time to apply one partition's batch", ["projection"])
RECOVERIES = Counter("ams_projection_recoveries", "Partitions recovered after their store lost data", ["projection"])
SANDBOXES_UNSERVED = Gauge("ams_projection_sandboxes_unserved",
                           "Registered sandboxes this worker cannot project (their topic is missing)")

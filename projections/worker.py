"""`ams project NAME`: one projection worker.

Each projection is its own Kafka consumer group, so projections advance, fail and scale independently. A
worker is an aiokafka consumer feeding the projector directly (`projections/feed.py`), and a small Starlette
app, served by uvicorn like the gateway, for its health, lag and Prometheus metrics. On every partition
assignment the worker seeks to the sink's own checkpoint + 1; Kafka's committed offsets are only a hint.

The pages listen on loopback unless ``AMS_METRICS_HOST`` says otherwise; then ``AMS_METRICS_TOKEN`` is
required, and ``/metrics`` and ``/positions`` answer only ``Authorization: Bearer <that token>`` (the health
pages stay open to probes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import AsyncIterator

import uvicorn
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ams import kafka_clients
from ams.namespaces import live
from ams.security import is_loopback
from ams.serving import QuietServer
from ams.settings import Settings
from ams.tasks import cancel_all
from projections import metrics
from projections.faults import exit_after_apply_hook
from projections.feed import Feed
from projections.projectors import HOT, SANDBOXED, SINKS, projector_for, source_topic
from projections.sandbox_follower import SandboxFollower

log = logging.getLogger("ams.projector")

# A worker that dies hands its partitions over after this long without a heartbeat (Kafka's default is 45 s).
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 2_000


def web_port(settings: Settings, name: str) -> int:
    return settings.projector_metrics_port + list(SINKS).index(name)


class _SeekOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs inside the group's rebalance, before any record of a newly assigned partition is fetched."""

    def __init__(self) -> None:
        self.feed: Feed | None = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass  # the sinks' checkpoints are what counts; the new owner reads them

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self.feed is not None
        await self.feed.begin({tp.partition for tp in assigned if tp.topic == self.feed.topic})


class ProjectionWorker:
    """One projection of the live log (and, for SANDBOXED ones, of every sandbox)."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.name, self.settings = name, settings
        self.make_sink = SINKS[name]
        self.sink = self.make_sink(settings, live(settings))
        self.topic = source_topic(self.sink, live(settings))
        self.fault_hook = exit_after_apply_hook()  # the fault suite's, read once here (None unless armed)
        self.projector = projector_for(self.sink, settings, live(settings), after_apply=self.fault_hook(name))
        self.feed: Feed | None = None

    @contextlib.asynccontextmanager
    async def running(self, app: Starlette) -> AsyncIterator[None]:
        listener = _SeekOnAssignment()
        consumer = AIOKafkaConsumer(
            **self.settings.kafka.client_options(),
            group_id=f"ams-projection-{self.name}",
            # Static membership: a worker restarted under the same instance id takes its partitions back at
            # once, instead of waiting for the group to drop its dead predecessor (the session timeout).
            group_instance_id=f"{self.settings.projector_instance}-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # a batch's transaction is applied whole, an aborted one never
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            max_partition_fetch_bytes=16 << 20,  # at least one record of the largest size the log takes
        )
        self.feed = listener.feed = Feed(self.projector, consumer, self.topic, group=True)
        consumer.subscribe([self.topic], listener=listener)
        await consumer.start()
        kafka_clients.fetch_when_drained(consumer)
        tasks = [asyncio.create_task(self.feed.run(), name=f"project {self.name}")]
        if self.name in SANDBOXED:
            follower = SandboxFollower(self.settings, self.make_sink, self.fault_hook)
            tasks.append(asyncio.create_task(follower.run(), name="follow sandboxes"))
        try:
            yield
        finally:
            await cancel_all(tasks)
            await kafka_clients.stop(consumer)
            await self.projector.dead_letters.close()
            await self.sink.close()

    def lags(self) -> dict[int, int]:
        lags = self.feed.lags() if self.feed is not None else {}
        for partition, lag in lags.items():
            metrics.LAG.labels(self.name, partition).set(lag)
        return lags

    def app(self) -> Starlette:
        async def metrics_page(request: Request) -> Response:
            if not self.allowed(request):
                return _token_needed()
            self.lags()
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        async def healthz(request: Request) -> Response:
            return JSONResponse({"status": "ok", "projection": self.name})

        async def readyz(request: Request) -> Response:
            assigned = sorted(self.feed.partitions()) if self.feed is not None else []
            body = {"projection": self.name, "assigned": assigned, "lag": self.lags()}
            return JSONResponse(body, status_code=200 if assigned else 503)

        async def positions(request: Request) -> Response:
            if not self.allowed(request):
                return _token_needed()
            return JSONResponse({"projection": self.name, "checkpoints": self.projector.checkpoints,
                                 "lag": self.lags()})

        routes = [Route("/metrics", metrics_page), Route("/healthz", healthz), Route("/readyz", readyz),
                  Route("/positions", positions)]
        return Starlette(routes=routes, lifespan=self.running)


    def allowed(self, request: Request) -> bool:
        """Whether the request may read the metrics: always without a token configured, else with it."""
        token = self.settings.metrics_token
        sent = request.headers.get("authorization", "")
        return not token or hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


def _token_needed() -> Response:
    error = {"code": "unauthorized", "message": "send 'Authorization: Bearer <AMS_METRICS_TOKEN>'"}
    return JSONResponse({"error": error}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ams-metrics"'})


def run_projection(name: str, settings: Settings) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if name != HOT:
        os.nice(settings.background_nice)  # before any thread starts: threads inherit it
    worker = ProjectionWorker(name, settings)
    if not is_loopback(settings.metrics_host) and not settings.metrics_token:
        raise SystemExit(f"AMS_METRICS_HOST={settings.metrics_host} is not loopback: set AMS_METRICS_TOKEN, which "
                         "its metrics pages will then ask for")
    config = uvicorn.Config(worker.app(), host=settings.metrics_host, port=web_port(settings, name),
                            log_level="warning", access_log=False)
    QuietServer(config).run()

"""`make bench`: AMS's latency and throughput beside the floors under them, measured in one run.

    python -m bench.latency [--quick] [--json] [--samples 2000] [--idle-seconds 60] [--rebuild-events 200000]

Against the running stack (`ams up`):

1. single client, sequential, over one keep-alive connection (bench/lean_http.py; the bare endpoint and the
   gateway through the same client): strong and eventual PUT, a GET right after an eventual PUT with its
   token, a batch of 10, GET with and without the session token, GET of one hot key, vector search; beside
   raw aiokafka send_and_wait and produce -> read_committed consume (the gateway's producer settings), a
   raw redis-py HMGET, the bare Starlette endpoint, and LangGraph's PostgresStore on the same PostgreSQL.
   Paths are interleaved, one call of each per round, so that every path sees the same machine load.
2. throughput under wrk at 16 and 64 connections (GET, strong and eventual PUT, the bare endpoint, over 16
   tenants) beside raw aiokafka at the same concurrency;
3. rebuild speed (bench.rebuild, on a topic of its own) against a raw read of the log;
4. the idle stack's CPU, once the projections have caught up;
5. issue 13's targets, each from the figures above.

A table for people, or ``--json``: one JSON document on standard output (progress goes to standard error).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
import uvloop
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ams.auth import issue_dev_token
from ams.settings import Settings, get_settings
from bench import bare_endpoint, peer
from bench import rebuild as rebuild_bench
from bench.agent import KEYS, VALUE, Agent, expect, search_body
from bench.common import Latencies, progress
from bench.http_load import HttpRun, Target, wrk
from bench.idle_cpu import IdleCpu, measure_idle
from bench.kafka_floor import FloorCalls, kafka_floor
from bench.latency_report import Results, evaluate, print_report
from bench.lean_http import LeanConnection

LOAD_LABELS = {"bare_get": "floor: bare endpoint GET", "get": "GET", "strong_put": "strong PUT",
               "eventual_put": "eventual PUT (respond-async)"}
LOAD_TENANTS = 16
LOAD_KEYS = 64  # per load tenant
CONNECTIONS = (16, 64)
Path = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class Options:
    samples: int
    warmup: int
    seconds: float  # of each wrk run
    idle_seconds: float
    rebuild_events: int
    quick: bool


async def interleaved(title: str, paths: dict[str, tuple[str, Path]], options: Options) -> dict[str, Latencies]:
    """``options.warmup`` untimed rounds, then ``options.samples`` timed ones; each calls every path once."""
    found = {key: Latencies(label) for key, (label, _) in paths.items()}
    with Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=progress, transient=True) as bar:
        task = bar.add_task(title, total=options.warmup + options.samples)
        for index in range(options.warmup + options.samples):
            for key, (_, path) in paths.items():
                began = time.perf_counter()
                timed = await path(index)  # a path that times itself (the Kafka floor) returns milliseconds
                if index >= options.warmup:
                    took = timed if isinstance(timed, float) else (time.perf_counter() - began) * 1000
                    found[key].samples.append(took)
            bar.advance(task)
    return found


def write_paths(agent: Agent, floor: FloorCalls, store: Any) -> dict[str, tuple[str, Path]]:
    async def strong(index: int) -> None:
        agent.put(f"state:{index % KEYS}")

    async def eventual(index: int) -> None:
        agent.last_eventual = agent.put(f"recent:{index % KEYS}", wait=False)

    async def read_eventual(index: int) -> None:
        agent.get(f"recent:{index % KEYS}", agent.last_eventual)

    async def batch(index: int) -> None:
        agent.batch([{"op": "put", "key": f"batch:{index % 100}:{n}", "value": {"step": index}} for n in range(10)])

    async def langgraph_put(index: int) -> None:
        peer.put(store, index)

    return {
        "strong_put": ("strong PUT", strong),
        "eventual_put": ("eventual PUT (respond-async)", eventual),
        "get_after_eventual_put": ("GET right after an eventual PUT, its token", read_eventual),
        "batch_10": ("POST /v1/batch, 10 puts (strong)", batch),
        "raw_kafka_send": ("floor: raw aiokafka send_and_wait", lambda index: floor.send()),
        "raw_kafka_produce_consume": ("floor: raw produce -> read_committed consume",
                                      lambda index: floor.send_and_consume()),
        "langgraph_put": ("peer: LangGraph PostgresStore.put", langgraph_put),
    }


def read_paths(agent: Agent, bare: LeanConnection, redis: aioredis.Redis, records: list[str],
               store: Any) -> dict[str, tuple[str, Path]]:
    token = agent.session.token

    async def get(index: int) -> None:
        agent.get(f"state:{index % KEYS}")

    async def get_with_token(index: int) -> None:
        agent.get(f"state:{index % KEYS}", token)

    async def hot(index: int) -> None:
        agent.get("state:0")

    async def bare_get(index: int) -> None:
        expect(bare.request("GET", "/value"), 200)

    async def raw_redis(index: int) -> None:
        await redis.hmget(records[index % KEYS], ["value", "version"])

    async def langgraph_get(index: int) -> None:
        peer.get(store, index)

    async def search(index: int) -> None:
        agent.search(index)

    async def bare_search(index: int) -> None:
        expect(bare.request("POST", "/search", search_body(agent.queries, index)), 200)

    return {
        "get": ("GET", get),
        "get_with_token": ("GET with the session token", get_with_token),
        "get_hot_key": ("GET of one hot key", hot),
        "bare_get": ("floor: bare endpoint GET", bare_get),
        "raw_redis_hmget": ("floor: raw redis-py HMGET", raw_redis),
        "langgraph_get": ("peer: LangGraph PostgresStore.get", langgraph_get),
        "vector_search": ("vector search, 1000 x 384, k=10", search),
        "bare_search": ("floor: bare endpoint POST, same body", bare_search),
    }


def load_targets(settings: Settings, run: str) -> dict[str, Target]:
    """What wrk sends: requests spread over ``LOAD_TENANTS`` tenants (many agents, under each one's rate limit)."""
    tenants = [(f"bench-load-{run}-{n}", None) for n in range(LOAD_TENANTS)]
    tokens = [issue_dev_token(settings, tenant, ["memory:read", "memory:write"], subject="bench")
              for tenant, _ in tenants]
    reads = [(f"/v1/kv/load:{k}", token) for token in tokens for k in range(LOAD_KEYS)]
    json = {"Content-Type": "application/json"}
    return {
        "bare_get": Target([("/value", None)]),
        "get": Target(reads),
        "strong_put": Target(reads, "PUT", VALUE, json, f"bench-{run}-strong"),
        "eventual_put": Target(reads, "PUT", VALUE, json | {"Prefer": "respond-async"}, f"bench-{run}-eventual"),
    }


def seed_load_keys(settings: Settings, targets: dict[str, Target]) -> None:
    """Write every key the load reads, one strong batch per tenant."""
    tokens = list(dict.fromkeys(token for _, token in targets["get"].paths))
    for token in tokens:
        http = LeanConnection(settings.gateway_host, settings.gateway_port,
                              {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        operations = [{"op": "put", "key": f"load:{k}", "value": {"step": 0}} for k in range(LOAD_KEYS)]
        expect(http.request("POST", "/v1/batch", orjson.dumps({"operations": operations})), 200)
        http.close()


async def throughput(settings: Settings, floor: FloorCalls, bare_port: int, run: str,
                     options: Options) -> dict[str, HttpRun]:
    targets = load_targets(settings, run)
    seed_load_keys(settings, targets)
    found: dict[str, HttpRun] = {}
    for connections in CONNECTIONS:
        for key, target in targets.items():
            base = f"http://127.0.0.1:{bare_port}" if key == "bare_get" else settings.gateway_url
            with progress.status(f"wrk: {key} x{connections} for {options.seconds:g}s"):
                found[f"{key}_x{connections}"] = wrk(LOAD_LABELS[key], base, target, seconds=options.seconds,
                                                     connections=connections)
        with progress.status(f"raw aiokafka x{connections} for {options.seconds:g}s"):
            per_second, latencies = await floor.sends_at(connections, options.seconds)
        found[f"raw_kafka_send_x{connections}"] = HttpRun(
            "floor: raw aiokafka send_and_wait", connections, len(latencies.samples), per_second, latencies.p50,
            latencies.p99, 0)
    return found


def wait_caught_up(agent: Agent, timeout: float) -> bool:
    """Until every projection has applied the whole log (``/v1/positions``); False if not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        projections = orjson.loads(expect(agent.http.request("GET", "/v1/positions"), 200).body)["projections"]
        if all(entry["lag"] == 0 for view in projections.values() for entry in view.values()):
            return True
        time.sleep(1)
    return False


async def measure_all(settings: Settings, options: Options) -> Results:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    agent = Agent(settings, f"bench-{uuid.uuid4().hex[:8]}")
    expect(agent.http.request("GET", "/readyz"), 200)
    processes = bare_endpoint.gateway_processes()
    redis = aioredis.from_url(settings.redis_url)
    try:
        with bare_endpoint.running(processes) as bare_port, peer.postgres_store(settings) as store:
            async with kafka_floor(settings) as floor:
                with progress.status("writing the bench's keys and vectors, waiting for vector search"):
                    agent.prepare()
                latency = await interleaved("sequential writes", write_paths(agent, floor, store), options)
                bare = LeanConnection("127.0.0.1", bare_port)
                records = await agent.record_keys(redis)
                latency |= await interleaved("sequential reads", read_paths(agent, bare, redis, records, store),
                                             options)
                bare.close()
                settled(agent, "the throughput runs")
                load = await throughput(settings, floor, bare_port, agent.run, options)
    finally:
        await redis.aclose()
    rebuild = await rebuild_bench.measure(options.rebuild_events, max(1, options.rebuild_events // 10),
                                          quiet=True) if options.rebuild_events else None
    idle = idle_cpu(agent, settings, options)
    config = {"started": started, "gateway_processes": processes, "samples": options.samples,
              "warmup": options.warmup, "wrk_seconds": options.seconds, "quick": options.quick,
              "reconnects": agent.http.reconnects}
    return Results(config, latency, load, idle, rebuild)


def settled(agent: Agent, what: str) -> None:
    """Wait until the projections have applied what came before (the vectors written for search keep the
    embedder and the vector views busy for a while), so that ``what`` measures AMS, not that backlog."""
    with progress.status("waiting for the projections to catch up"):
        caught_up = wait_caught_up(agent, 180)
    if not caught_up:
        progress.print(f"[yellow]the projections did not catch up within 180 s: {what} include that work")


def idle_cpu(agent: Agent, settings: Settings, options: Options) -> IdleCpu:
    settled(agent, "the idle figures")
    agent.http.close()
    with progress.status(f"idle stack: CPU of AMS's processes over {options.idle_seconds:g}s"):
        return measure_idle(settings, options.idle_seconds)


def parse_options() -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run: few samples, 2 s wrk runs, 5 s idle, no rebuild")
    parser.add_argument("--json", action="store_true", help="one JSON document on standard output, no table")
    parser.add_argument("--samples", type=int, help="timed calls per sequential path (default 2000; quick 100)")
    parser.add_argument("--seconds", type=float, help="duration of each throughput run (default 5; quick 2)")
    parser.add_argument("--idle-seconds", type=float, help="idle CPU interval (default 60; quick 5)")
    parser.add_argument("--rebuild-events", type=int, help="events of the rebuild run, 0 skips it "
                        "(default 200000; quick 0)")
    args = parser.parse_args()
    quick = args.quick
    options = Options(
        samples=args.samples or (100 if quick else 2000),
        warmup=20 if quick else 200,
        seconds=args.seconds or (2 if quick else 5),
        idle_seconds=args.idle_seconds or (5 if quick else 60),
        rebuild_events=args.rebuild_events if args.rebuild_events is not None else (0 if quick else 200_000),
        quick=quick,
    )
    if options.samples < 1 or options.seconds <= 0 or options.idle_seconds <= 0 or options.rebuild_events < 0:
        parser.error("--samples, --seconds and --idle-seconds must be positive, --rebuild-events 0 or more")
    return options, args.json


def main() -> None:
    options, as_json = parse_options()
    results = uvloop.run(measure_all(get_settings(), options))
    outcomes = evaluate(results)
    if as_json:
        print(orjson.dumps(results.as_json(outcomes), option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(results, outcomes)


if __name__ == "__main__":
    main()

"""What `bench.latency` found, issue 13's targets computed from it, and how it is shown: tables or JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bench.common import Latencies, console
from bench.http_load import HttpRun
from bench.idle_cpu import IdleCpu
from bench.rebuild import RebuildSpeed
from bench.targets import Outcome, at_least_times, at_most, at_most_times, within_margin

IDLE_LIMIT_PERCENT = 5.0


@dataclass(frozen=True)
class Results:
    config: dict[str, Any]
    latency: dict[str, Latencies]
    throughput: dict[str, HttpRun]
    idle: IdleCpu
    rebuild: RebuildSpeed | None

    def as_json(self, outcomes: list[Outcome]) -> dict[str, Any]:
        rebuild = None if self.rebuild is None else {
            "events": self.rebuild.events, "keys": self.rebuild.keys, "raw_read_per_second": round(self.rebuild.raw),
            "building_per_second": round(self.rebuild.building), "whole_per_second": round(self.rebuild.whole)}
        return {
            "config": self.config,
            "latency": {key: {"what": found.name, **found.as_json()} for key, found in self.latency.items()},
            "throughput": {key: {"what": run.name, **run.as_json()} for key, run in self.throughput.items()},
            "idle_cpu": {"seconds": round(self.idle.seconds, 1), "total_percent_of_a_core": round(self.idle.total, 2),
                         "processes": {name: round(value, 2) for name, value in self.idle.percent_of_a_core.items()}},
            "rebuild": rebuild,
            "targets": [outcome.as_json() for outcome in outcomes],
            "targets_met": sum(outcome.met for outcome in outcomes),
            "targets_total": len(outcomes),
        }


def evaluate(results: Results) -> list[Outcome]:
    """Issue 13's targets (section 2, and the hot-key cache's), each from this run's figures."""
    lat, load = results.latency, results.throughput
    consume, send = lat["raw_kafka_produce_consume"], lat["raw_kafka_send"]
    get_floor = lat["bare_get"].p50 + lat["raw_redis_hmget"].p50
    get_floor_text = "bare endpoint p50 + raw Redis p50"
    outcomes = [
        within_margin("strong PUT p50", lat["strong_put"].p50, consume.p50, "raw produce->consume p50", 1.5),
        at_most_times("strong PUT p99", lat["strong_put"].p99, consume.p99, "raw produce->consume p99", 2, "ms"),
        within_margin("eventual PUT p50", lat["eventual_put"].p50, send.p50, "raw send_and_wait p50", 0.5),
        within_margin("GET p50", lat["get"].p50, get_floor, get_floor_text, 0.2),
        within_margin("GET with token p50", lat["get_with_token"].p50, get_floor, get_floor_text, 0.2),
        within_margin("hot-key GET p50", lat["get_hot_key"].p50, lat["bare_get"].p50, "bare endpoint p50", 0.1),
        _at_least(load, "GET x16 req/s", "get_x16", "bare_get_x16", "bare endpoint x16 req/s", 0.5),
        _at_least(load, "eventual PUT x16 req/s", "eventual_put_x16", "raw_kafka_send_x16", "raw aiokafka x16", 0.5),
        _at_least(load, "strong PUT x16 req/s", "strong_put_x16", "raw_kafka_send_x16", "raw aiokafka x16", 0.3),
        at_most("idle stack CPU", results.idle.total, IDLE_LIMIT_PERCENT, "% of a core"),
    ]
    if results.rebuild is not None:
        outcomes.append(at_least_times("rebuild events/s", results.rebuild.building, results.rebuild.raw,
                                       "raw aiokafka read", 0.25, "events/s"))
    return outcomes


def _at_least(load: dict[str, HttpRun], name: str, figure: str, floor: str, floor_text: str,
              factor: float) -> Outcome:
    errors = load[figure].errors + load[floor].errors
    return at_least_times(name, load[figure].per_second, load[floor].per_second, floor_text, factor, "req/s", errors)


def print_report(results: Results, outcomes: list[Outcome]) -> None:
    config = results.config
    latency = Table("path", "p50 ms", "p99 ms", "p99.9 ms", "mean ms",
                    title=f"single client, sequential: {config['samples']} calls per path after {config['warmup']} "
                          "warm-up, paths interleaved")
    for found in results.latency.values():
        numbers = found.as_json()
        latency.add_row(found.name, *(f"{numbers[column]:.3f}" for column in ("p50_ms", "p99_ms", "p999_ms",
                                                                              "mean_ms")))
    console.print(latency)
    load = Table("path", "connections", "req/s", "p50 ms", "p99 ms", "errors",
                 title=f"throughput: wrk, {config['wrk_seconds']:g} s a run; raw aiokafka as many tasks")
    for run in results.throughput.values():
        load.add_row(run.name, str(run.connections), f"{run.per_second:,.0f}", f"{run.p50_ms:.2f}",
                     f"{run.p99_ms:.2f}", str(run.errors))
    console.print(load)
    idle = Table("process", "% of one core", title=f"idle stack over {results.idle.seconds:.0f} s")
    for name, percent in results.idle.percent_of_a_core.items():
        idle.add_row(name, f"{percent:.2f}")
    idle.add_row("[bold]total", f"[bold]{results.idle.total:.2f}")
    console.print(idle)
    if results.rebuild is not None:
        speed = results.rebuild
        console.print(f"rebuild of {speed.events:,} events: building {speed.building:,.0f} events/s, raw read "
                      f"{speed.raw:,.0f} events/s, whole command {speed.whole:,.0f} events/s")
    print_targets(outcomes, config)


def print_targets(outcomes: list[Outcome], config: dict[str, Any]) -> None:
    table = Table("target", "figure", "floor", "floor is", "vs floor", "rule", "met",
                  title=f"issue 13's targets ({config['gateway_processes']} gateway process(es))")
    for outcome in outcomes:
        met = "[green]met" if outcome.met else "[red]missed"
        table.add_row(outcome.name, f"{outcome.figure:,.3f} {outcome.unit}",
                      "-" if outcome.floor is None else f"{outcome.floor:,.3f}", outcome.floor_text,
                      outcome.comparison_text, outcome.target, met + (f" ({outcome.note})" if outcome.note else ""))
    console.print(table)
    console.print(f"{sum(outcome.met for outcome in outcomes)} of {len(outcomes)} targets met")

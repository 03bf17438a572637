"""HTTP load from `wrk` (a C load generator), so the measured ceiling is the server's, not the client's."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class HttpRun:
    name: str
    connections: int
    count: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and non-2xx answers

    def as_json(self) -> dict[str, Any]:
        return {"connections": self.connections, "requests": self.count, "per_second": round(self.per_second, 1),
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors}


@dataclass(frozen=True)
class Target:
    """What wrk sends: requests cycle through ``paths``, each with its own Authorization token (or none)."""

    paths: Sequence[tuple[str, str | None]]  # (path, bearer token)
    method: str = "GET"
    body: bytes = b""
    headers: dict[str, str] | None = None
    #: A prefix for an Idempotency-Key unique to each request (writes), or None for no such header.
    idempotency_prefix: str | None = None


def _lua(target: Target) -> str:
    entries = ",\n".join(f'  {{"{path}", {_lua_string(token)}}}' for path, token in target.paths)
    base = ", ".join(f'["{name}"] = "{value}"' for name, value in (target.headers or {}).items())
    key = (f'  headers["Idempotency-Key"] = "{target.idempotency_prefix}-" .. id .. "-" .. counter\n'
           if target.idempotency_prefix else "")
    return (f'wrk.method = "{target.method}"\nwrk.body = [[{target.body.decode()}]]\n'
            f"local entries = {{\n{entries}\n}}\n"
            "local threads = 0\n"
            'function setup(thread)\n  threads = threads + 1\n  thread:set("id", threads)\nend\n'
            "counter = 0\n"
            "request = function()\n"
            "  counter = counter + 1\n"
            "  local entry = entries[counter % #entries + 1]\n"
            f"  local headers = {{{base}}}\n"
            '  if entry[2] then headers["Authorization"] = "Bearer " .. entry[2] end\n'
            f"{key}"
            "  return wrk.format(nil, entry[1], headers)\n"
            "end\n")


def _lua_string(text: str | None) -> str:
    return "nil" if text is None else f'"{text}"'


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(name: str, base_url: str, target: Target, *, seconds: float, connections: int) -> HttpRun:
    """Run wrk with ``connections`` connections (two threads) for ``seconds`` against ``base_url``."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make bench` (it installs Debian's wrk) or apt-get install wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_lua(target))
        script.flush()
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name,
             base_url],
            capture_output=True, text=True, check=True,
        ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.M))
    if set(percentiles) != {"50", "99"}:
        raise SystemExit(f"wrk's output for {name} has no latency distribution:\n{output}")
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return HttpRun(name, connections, requests,
                   float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
                   _ms(percentiles["50"]), _ms(percentiles["99"]), errors)

"""HTTP load from `wrk` (a C load generator), so the measured ceiling is the server's, not the client's."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class HttpRun:
    name: str
    count: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(name: str, url: str, *, method: str = "GET", body: bytes = b"", headers: dict[str, str] | None = None,
        vary_key: str | None = None, seconds: int = 5, connections: int = 16) -> HttpRun:
    """Run wrk against ``url``; with ``vary_key``, the path's last segment cycles through 500 keys."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run `make bench` (it installs Debian's wrk) or apt-get install wrk")
    lines = [f'wrk.method = "{method}"', f"wrk.body = [[{body.decode()}]]"]
    lines += [f'wrk.headers["{name_}"] = "{value}"' for name_, value in (headers or {}).items()]
    if vary_key:
        lines += ["counter = 0", "request = function()", "  counter = counter + 1",
                  f'  return wrk.format(nil, "{vary_key}" .. (counter % 500))', "end"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write("\n".join(lines) + "\n")
        script.flush()
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
            capture_output=True, text=True, check=True,
        ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return HttpRun(name, requests, float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
                   _ms(percentiles["50"]), _ms(percentiles["99"]), errors)

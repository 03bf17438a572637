"""The system packages the local stack runs on, installed with apt-get when they are missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

# What must be found on this machine -> the Debian package that provides it.
REQUIRED = {
    "redis-server": "redis-server",
    "initdb": "postgresql",
    "java": "openjdk-17-jre-headless",
    "mvn": "maven",
}
# The retrieval benchmark's labeled set is made from WordNet's noun data (bench/wordnet_set.py).
WORDNET = {"/usr/share/wordnet/data.noun": "wordnet-base"}
# Only the test suite needs these: it validates compose/docker-compose*.yml without a Docker engine, and
# runs `bench.latency --quick` (tests/bench), which loads the gateway with wrk, and `bench.retrieval`.
FOR_TESTS = {"docker-compose": "docker-compose", "wrk": "wrk", **WORDNET}
# The benchmarks load the gateway with wrk, so that the load generator is not the bottleneck.
FOR_BENCH = {"wrk": "wrk", **WORDNET}


def postgres_bin(name: str) -> str | None:
    """Debian keeps the PostgreSQL server programs off PATH, under /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major, reverse=True)
    return found[0] if found else shutil.which(name)


def _major(path: str) -> int:
    try:
        return int(path.split("/")[4])
    except (IndexError, ValueError):
        return 0


def _present(program: str) -> bool:
    """A program on PATH, or (an absolute path) a data file a package installs."""
    if program.startswith("/"):
        return os.path.exists(program)
    return (postgres_bin(program) if program == "initdb" else shutil.which(program)) is not None


def ensure_packages(programs: dict[str, str] = REQUIRED) -> None:
    """Install the Debian packages behind any missing program, or say exactly what to install."""
    missing = sorted({package for program, package in programs.items() if not _present(program)})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            f"The local stack needs these packages, which are not installed: {' '.join(missing)}.\n"
            f"Install them (for example: sudo apt-get install -y {' '.join(missing)}) and run again."
        )
    print(f"Installing system packages: {' '.join(missing)} (apt-get)...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )

"""Debian's redis-server on its own port, with its data under the stack's home folder."""

from __future__ import annotations

from ams.settings import Settings
from compose import security
from compose.process import ManagedProcess


def start(settings: Settings, process: ManagedProcess) -> None:
    data_dir = settings.home / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    users = security.write_redis_acl(settings, data_dir)
    process.start(
        [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(settings.redis_port),
            "--dir", str(data_dir),
            "--daemonize", "no",
            # The hot state is a projection that can be rebuilt from the log; an append-only file
            # with per-second fsync makes restarts fast without making Redis a source of truth.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--aclfile", str(users),
        ]
    )

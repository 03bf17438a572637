"""Debian's PostgreSQL server, initialised under the stack's home folder and run as the postgres user.

PostgreSQL refuses to run as root, so when the launcher is root the cluster belongs to ``postgres``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

from ams import credentials
from ams.settings import Settings
from compose import security
from compose.process import ManagedProcess
from compose.system import postgres_bin

USER = credentials.postgres_role(credentials.ADMIN)  # the cluster's owner: the operator's tools, never a component
DATABASE = "ams"


def _run_as() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


def _chown_for_postgres(path: str | os.PathLike[str]) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        shutil.chown(path, entry.pw_uid, entry.pw_gid)


def start(settings: Settings, process: ManagedProcess) -> None:
    root = settings.home / "postgres"
    data_dir = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    _chown_for_postgres(root)
    authenticated = root / ".roles"  # made with the cluster: its owner's password is the admin principal's
    if (data_dir / "PG_VERSION").exists() and not authenticated.exists():
        raise SystemExit(f"{data_dir} was made before PostgreSQL had a role per component and a generated "
                         f"password. Stop the stack (`ams down`) and remove {settings.home} to start afresh.")
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, security.password(settings, credentials.ADMIN))
        authenticated.touch()
    tls = security.postgres_tls(settings, root, _run_as())
    postgres = postgres_bin("postgres")
    assert postgres, "postgres server program not found; run `ams up` to install it"
    process.start(
        [
            postgres, "-D", str(data_dir),
            "-c", f"port={settings.postgres_port}",
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "fsync=on",
            "-c", "max_connections=200",
            *tls,
        ],
        user=_run_as(),
        cwd=root,
    )


def _initdb(data_dir: os.PathLike[str], password: str) -> None:
    initdb = postgres_bin("initdb")
    assert initdb, "initdb not found; run `ams up` to install PostgreSQL"
    with tempfile.NamedTemporaryFile("w", suffix=".pw", delete=False) as pwfile:
        pwfile.write(password)
    _chown_for_postgres(pwfile.name)
    try:
        subprocess.run(
            [
                initdb, "-D", str(data_dir), "-U", USER, f"--pwfile={pwfile.name}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
            user=_run_as(),
            cwd="/",
        )
    finally:
        os.unlink(pwfile.name)

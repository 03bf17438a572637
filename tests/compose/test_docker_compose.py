"""The Docker Compose files stay valid.

Nothing in the suite runs the stack from compose/docker-compose*.yml (the tests use the local launcher), so
without this check a broken key or a renamed service would only show when a Docker user runs `up`.
`docker-compose config` validates a file against the Compose schema without a Docker engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FILES = {
    "compose/docker-compose.yml": (
        "kafka kafka-init redis postgres etcd minio milvus projector-redis projector-postgres projector-embedder "
        "projector-milvus gateway"
    ).split(),
    "compose/docker-compose.cluster.yml": (
        "kafka-1 kafka-2 kafka-3 kafka-init redis postgres etcd minio milvus "
        "projector-redis-1 projector-redis-2 projector-postgres-1 projector-postgres-2 projector-embedder-1 "
        "projector-embedder-2 projector-milvus gateway-1 gateway-2"
    ).split(),
}


SECRETS = {"AMS_JWT_SECRET": "a-test-secret-of-more-than-thirty-two-bytes",
           "AMS_REDIS_PASSWORD": "redis-test-password", "AMS_POSTGRES_PASSWORD": "postgres-test-password"}


def _config(compose_file: str, *args: str, secrets: dict[str, str] = SECRETS) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail(
            "docker-compose is not on PATH: the setup step should have installed Debian's "
            "docker-compose package (apt-get install docker-compose)"
        )
    return subprocess.run(
        [executable, "-f", compose_file, "config", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**{name: value for name, value in os.environ.items() if name not in SECRETS}, **secrets},
    )


@pytest.mark.parametrize("compose_file", list(FILES))
def test_compose_file_is_valid(compose_file: str) -> None:
    quiet = _config(compose_file, "-q")
    assert quiet.returncode == 0, f"{compose_file} is invalid:\n{quiet.stderr}"

    rendered = _config(compose_file)
    assert rendered.returncode == 0, rendered.stderr
    for service in FILES[compose_file]:
        assert f"\n  {service}:\n" in rendered.stdout, f"{compose_file}: no service {service!r}"


@pytest.mark.parametrize("compose_file", list(FILES))
@pytest.mark.parametrize("missing", list(SECRETS))
def test_compose_file_refuses_to_start_without_a_secret(compose_file: str, missing: str) -> None:
    """No secret written in the file to fall back on: whoever runs it chooses one."""
    rendered = _config(compose_file, "-q", secrets={name: value for name, value in SECRETS.items() if name != missing})
    assert rendered.returncode != 0
    assert missing in rendered.stderr


@pytest.mark.parametrize("compose_file", list(FILES))
def test_compose_file_writes_no_backend_password_of_its_own(compose_file: str) -> None:
    rendered = _config(compose_file).stdout
    assert "postgresql://ams:ams@" not in rendered and "POSTGRES_PASSWORD: ams\n" not in rendered
    assert rendered.count("redis-test-password") >= 3  # the server, its health check and every AMS process

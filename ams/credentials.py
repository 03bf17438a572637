"""The local stack's secrets: one password per principal, generated on first use into the data folder.

A principal is who connects to a backend: the operator's tools (``admin``), the gateway, each projection
worker, and the broker's own links (``broker`` between brokers, ``controller`` to the KRaft controller).
Each has one password, used for every backend it reaches (its Kafka SCRAM user, its Redis ACL user and its
PostgreSQL role), kept in ``<secrets dir>/<principal>`` with mode 0600. What each principal may do is
decided in `compose.security`; this module only makes and reads the secrets.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ADMIN = "admin"
GATEWAY = "gateway"
PROJECTORS = tuple(f"projector-{name}" for name in ("redis", "postgres", "embedder", "milvus"))
BROKER = "broker"  # the broker's own connections to brokers (inter-broker listener)
CONTROLLER = "controller"  # the broker's connections to the KRaft controller (controller listener)
CLIENTS = (ADMIN, GATEWAY, *PROJECTORS)
PRINCIPALS = (*CLIENTS, BROKER, CONTROLLER)


def projector(projection: str) -> str:
    """The principal of the ``projection``'s worker (`ams project <projection>`)."""
    return f"projector-{projection}"


def ensure(secrets_dir: Path) -> None:
    """Make a password for each principal that has none yet; safe when several processes race to do it."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for principal in PRINCIPALS:
        path = secrets_dir / principal
        if path.exists():
            continue
        draft = secrets_dir / f".{principal}.{os.getpid()}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))  # URL- and config-safe: no quoting needed anywhere
        try:
            os.link(draft, path)  # atomic, and refuses to replace a password another process made first
        except FileExistsError:
            pass
        finally:
            draft.unlink()


def password(secrets_dir: Path, principal: str) -> str | None:
    """The principal's password, or None when the secrets have not been made."""
    try:
        return (secrets_dir / principal).read_text().strip() or None
    except FileNotFoundError:
        return None


def postgres_role(principal: str) -> str:
    """The PostgreSQL role of ``principal``: the operator's is the cluster's owner (``ams``, made by initdb)."""
    return "ams" if principal == ADMIN else "ams_" + principal.replace("-", "_")

"""Refusing insecure settings outside development.

A gateway is "exposed" when ``AMS_ENV=production`` or when it binds to an address other than loopback
(anyone on the network may reach it). An exposed gateway refuses to start with the built-in development JWT
secret or an HMAC secret shorter than ``MIN_SECRET_BYTES`` (RFC 7518 asks for at least the hash's size),
and every gateway refuses a certificate without its key or a key without its certificate. The message
names each setting that is wrong.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from ams.settings import DEVELOPMENT_JWT_SECRET, Settings

MIN_SECRET_BYTES = 32
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposed(settings: Settings, host: str) -> bool:
    return settings.env == "production" or not is_loopback(host)


def gateway_problems(settings: Settings, host: str) -> list[str]:
    """Why this gateway must not start on ``host`` with these settings ([] when it may)."""
    problems = []
    if bool(settings.tls_certfile) != bool(settings.tls_keyfile):
        problems.append("AMS_TLS_CERTFILE and AMS_TLS_KEYFILE go together: set both or neither")
    for name, path in (("AMS_TLS_CERTFILE", settings.tls_certfile), ("AMS_TLS_KEYFILE", settings.tls_keyfile)):
        if path and not Path(path).is_file():
            problems.append(f"{name}={path} is not a file")
    hmac = any(algorithm.startswith("HS") for algorithm in settings.jwt_algorithms)
    if exposed(settings, host) and hmac and not settings.jwks_url:
        why = "AMS_ENV=production" if settings.env == "production" else f"it listens on {host}, not loopback"
        if settings.jwt_secret == DEVELOPMENT_JWT_SECRET:
            problems.append(f"AMS_JWT_SECRET is the built-in development secret, refused because {why}: "
                            f"set a random secret of at least {MIN_SECRET_BYTES} bytes")
        elif len(settings.jwt_secret.encode()) < MIN_SECRET_BYTES:
            problems.append(f"AMS_JWT_SECRET is {len(settings.jwt_secret.encode())} bytes, refused because {why}: "
                            f"it must be at least {MIN_SECRET_BYTES}")
    if settings.env not in ("development", "production"):
        problems.append(f"AMS_ENV={settings.env!r} must be 'development' or 'production'")
    return problems


def check_gateway(settings: Settings, host: str) -> None:
    problems = gateway_problems(settings, host)
    if problems:
        raise SystemExit("the gateway refuses to start:\n  - " + "\n  - ".join(problems))

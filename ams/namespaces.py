"""Namespaces: the live memory, and each sandbox, as the same code over different names.

A namespace names the log topic its events are appended to and the place each projection keeps its state.
The live namespace uses the configured topic and prefix; a sandbox gets a topic and a prefix of its own, so
writes to a sandbox never reach the live log and its projections never touch live state.
"""

from __future__ import annotations

from dataclasses import dataclass

from ams.settings import Settings

ALL_TENANTS = "all"  # the owner part of a sandbox made of every tenant's events (an operator's sandbox)


@dataclass(frozen=True)
class Namespace:
    label: str  # for logs and metrics: "live" or "sandbox <owner>/<name>"
    topic: str
    redis_prefix: str
    postgres_schema: str

    @property
    def is_live(self) -> bool:
        return self.label == "live"


def live(settings: Settings) -> Namespace:
    return Namespace("live", settings.events_topic, settings.redis_prefix, settings.postgres_schema)


def sandbox(settings: Settings, owner: str, name: str) -> Namespace:
    """``owner`` is the tenant the sandbox belongs to, or ALL_TENANTS."""
    return Namespace(
        f"sandbox {owner}/{name}",
        f"{settings.events_topic}.sandbox.{owner}.{name}",
        f"{settings.redis_prefix}:sb:{owner}:{name}",
        f"sandbox_{owner}_{name}".replace("-", "_"),
    )

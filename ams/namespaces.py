"""Namespaces: the live memory, and each sandbox, as the same code over different names.

A namespace names the log topic its events are appended to and the place each projection keeps its state,
its vector views included (the embedder's Redis prefix and the embeddings stream it emits into). The live
namespace uses the configured names; a sandbox gets names of its own, so writes to a sandbox never reach
the live log and its projections never touch live state.
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
    embeddings_topic: str  # what the namespace's embedder emits and its FAISS view reads
    embedder_prefix: str  # the embedder's Redis state: its folded records, checkpoints, tenants' dimensions

    @property
    def is_live(self) -> bool:
        return self.label == "live"


def live(settings: Settings) -> Namespace:
    return Namespace("live", settings.events_topic, settings.redis_prefix, settings.postgres_schema,
                     settings.embeddings_topic, f"{settings.redis_prefix}-embedder")


def sandbox(settings: Settings, owner: str, name: str) -> Namespace:
    """``owner`` is the tenant the sandbox belongs to, or ALL_TENANTS."""
    return Namespace(
        f"sandbox {owner}/{name}",
        f"{settings.events_topic}.sandbox.{owner}.{name}",
        f"{settings.redis_prefix}:sb:{owner}:{name}",
        f"sandbox_{owner}_{name}".replace("-", "_"),
        f"{settings.embeddings_topic}.sandbox.{owner}.{name}",
        f"{settings.redis_prefix}-embedder:sb:{owner}:{name}",
    )

"""Namespaces: the live memory, and each sandbox, as the same code over different names.

A namespace names the log topic its events are appended to and the place each projection keeps its state,
its vector views included (the embedder's Redis prefix and the embeddings stream it emits into). The live
namespace uses the configured names; a sandbox gets names of its own, so writes to a sandbox never reach
the live log and its projections never touch live state.

A sandbox's names come from one function, `sandbox_names`, and never collide: each is a readable part
(owner and name, shortened to fit) followed by a hash of the exact (owner, name) pair, so two pairs that
read alike once shortened or once their punctuation is folded (``a-b``/``c`` and ``a``/``b-c`` in a
PostgreSQL schema, ``.`` and ``_`` which Kafka treats as one in topic names) still get different names. Each
name keeps to its backend's characters and length: Kafka topics ``[a-zA-Z0-9._-]``, at most 249; PostgreSQL
identifiers ``[a-z0-9_]`` starting with a letter, at most 63 bytes (the schema's, with the suffixes of the
identifiers named after it); Redis keys anything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ams.settings import Settings

ALL_TENANTS = "all"  # the owner part of a sandbox made of every tenant's events (an operator's sandbox)

HASH_CHARS = 16  # hex digits of the pair's SHA-256 kept in every name: 64 bits
MAX_TOPIC = 249  # Kafka's limit on a topic's name
MAX_IDENTIFIER = 63  # PostgreSQL's limit on an identifier, in bytes
# The schema's name is also the stem of other identifiers: its NOTIFY channel, `<schema>_applied`
# (projections/postgres_schema.py). A sandbox's schema leaves room for the longest suffix.
SCHEMA_SUFFIX_ROOM = len("_applied")
TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._-]+")
SCHEMA_CHARS = re.compile(r"[a-z_][a-z0-9_]*")


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

    @property
    def metrics_label(self) -> str:
        """The label without a tenant's name: "live", or "sandbox <hash>" (the hash its backend names end in)."""
        return "live" if self.is_live else f"sandbox {self.topic.rsplit('.', 1)[-1]}"

    @property
    def topics(self) -> tuple[str, str]:
        return self.topic, self.embeddings_topic


def live(settings: Settings) -> Namespace:
    return Namespace("live", settings.events_topic, settings.redis_prefix, settings.postgres_schema,
                     settings.embeddings_topic, f"{settings.redis_prefix}-embedder")


def pair_hash(owner: str, name: str) -> str:
    """A short hash of the exact pair; ``|`` is in neither grammar, so the hashed text is itself unambiguous."""
    return hashlib.sha256(f"{owner}|{name}".encode()).hexdigest()[:HASH_CHARS]


def _readable(owner: str, name: str, separator: str, room: int) -> str:
    """Owner and name for people reading a backend's listing, cut to ``room`` characters (the hash keeps
    names apart, not this part)."""
    return f"{owner}{separator}{name}"[:max(0, room)]


def _topic(base: str, owner: str, name: str, digest: str) -> str:
    stem = f"{base}.sandbox."
    topic = f"{stem}{_readable(owner, name, '.', MAX_TOPIC - len(stem) - len(digest) - 1)}.{digest}"
    if len(topic) > MAX_TOPIC or not TOPIC_CHARS.fullmatch(topic):
        raise ValueError(f"the topic {base!r} leaves no room for a sandbox's topic name; shorten it")
    return topic


def _schema(owner: str, name: str, digest: str) -> str:
    room = MAX_IDENTIFIER - SCHEMA_SUFFIX_ROOM - len("sb__") - len(digest)
    readable = _readable(owner, name, "_", room).replace("-", "_")
    return f"sb_{readable}_{digest}"


def sandbox(settings: Settings, owner: str, name: str) -> Namespace:
    """``owner`` is the tenant the sandbox belongs to, or ALL_TENANTS; every name is `pair_hash`-suffixed."""
    digest = pair_hash(owner, name)
    return Namespace(
        f"sandbox {owner}/{name}",
        _topic(settings.events_topic, owner, name, digest),
        f"{settings.redis_prefix}:sb:{owner}:{name}:{digest}",
        _schema(owner, name, digest),
        _topic(settings.embeddings_topic, owner, name, digest),
        f"{settings.redis_prefix}-embedder:sb:{owner}:{name}:{digest}",
    )


def kafka_collision_form(topic: str) -> str:
    """Kafka refuses a topic whose name equals an existing one once ``.`` is read as ``_`` (their metric
    names would clash); two topics collide when this form is the same."""
    return topic.replace(".", "_")

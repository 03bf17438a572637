"""Where the hot projection keeps things in Redis. Writer (projector) and readers (gateway) share this.

Every key of partition ``p`` carries the hash tag ``{p<p>}``, so one partition's records, index and
checkpoint live in one Redis Cluster slot and a batch with its checkpoint is one atomic script.

Each partition's state lives in a **generation** (``g<N>`` in the key). A per-partition pointer names the
generation readers use; a rebuild fills generation N+1 beside the live one and moves the pointer once the
new generation has caught up (see `replay/rebuild_redis.py`). A namespace ``prefix`` separates the live state
(``ams``) from sandboxes (``ams:sb:<name>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from commands.keys import kafka_key


@dataclass(frozen=True)
class RedisLayout:
    prefix: str = "ams"
    generation: int = 0

    def at(self, generation: int) -> RedisLayout:
        return _at(self.prefix, generation)

    def _tag(self, partition: int) -> str:
        return f"{self.prefix}:g{self.generation}:{{p{partition}}}"

    def partition_prefix(self, partition: int) -> str:
        """What the name of every key of the partition starts with."""
        return f"{self._tag(partition)}:"

    def record(self, partition: int, tenant: str, key: str) -> str:
        return f"{self._tag(partition)}:kv:{tenant}:{key}"

    def stream(self, partition: int, tenant: str, name: str) -> str:
        """A stream's record: its count of observations, last version and recent command ids."""
        return f"{self._tag(partition)}:stream:{tenant}:{name}"

    def commands(self, partition: int, tenant: str, name: str) -> str:
        """A key's command index: command id -> ``"<version>:<ts>"`` of the commands its record's list let go
        (`commands.fold`); ``name`` is a key, or a stream's name after the stream mark."""
        return f"{self._tag(partition)}:cmd:{tenant}:{name}"

    def command_times(self, partition: int, tenant: str, name: str) -> str:
        """The same command ids by event time (a sorted set), to drop those older than the window."""
        return f"{self._tag(partition)}:cmdt:{tenant}:{name}"

    def index(self, partition: int, tenant: str) -> str:
        """A sorted set of the tenant's keys in the partition (all scores 0, so ranges are lexical)."""
        return f"{self._tag(partition)}:idx:{tenant}"

    def checkpoint(self, partition: int) -> str:
        return f"{self._tag(partition)}:ckpt"

    def live(self, partition: int) -> str:
        """Present while Redis holds every event of the partition that anyone was told about.

        Only the projector sets it, at the end of a recovery; losing Redis's data loses it too, so a
        reader that does not find it knows the hot state may be behind and reads PostgreSQL instead.
        """
        return f"{self._tag(partition)}:live"

    def unfinished(self, partition: int) -> str:
        """Set by a rebuild writing a big batch in parts: the checkpoint it expected (see redis_kv.py)."""
        return f"{self._tag(partition)}:unfinished"

    def outcome(self, partition: int, offset: int) -> str:
        """The outcome of an event the fold did not accept, kept for writers waiting on it."""
        return f"{self._tag(partition)}:out:{offset}"

    def rebuild_state(self, projection: str) -> str:
        """What the last rebuild of ``projection`` reported (`replay.rebuild_state`)."""
        return f"{self.prefix}:rebuild:{projection}"

    def rebuild_lock(self, projection: str) -> str:
        """Held while ``projection`` is being rebuilt, by whoever rebuilds it (`replay.rebuild_lock`)."""
        return f"{self.prefix}:rebuild:{projection}:lock"

    def generation_pattern(self) -> str:
        """SCAN pattern of every key of this generation (to drop a retired one)."""
        return f"{self.prefix}:g{self.generation}:{{p*}}:*"

    def pointer(self, partition: int) -> str:
        """The generation readers use for the partition (absent: generation 0)."""
        return f"{self.prefix}:{{p{partition}}}:generation"

    @property
    def applied_channel(self) -> str:
        """Pub/sub channel on which the projector announces every batch it applied (see `Announcement`)."""
        return f"{self.prefix}:applied"


@dataclass(frozen=True, slots=True)
class Announcement:
    """A message of the applied channel: a batch moved ``partition``'s checkpoint in ``generation`` from
    ``previous`` to ``offset``, changing the records of ``keys`` (``b"tenant|key"``, as Kafka keys them).

    On the wire, ``<generation>:<partition>:<offset>:<previous>``, then one line per key. Streams are not
    named (nothing caches them), nor are the keys of a rebuild's batches (nobody reads its generation before
    it is switched in). ``previous`` lets a listener notice a batch it never heard of: the next one it hears
    does not start where the last one ended.
    """

    generation: int
    partition: int
    offset: int
    previous: int
    keys: list[bytes]

    @staticmethod
    def parse(message: bytes) -> Announcement:
        head, *keys = message.split(b"\n")
        generation, partition, offset, previous = map(int, head.split(b":"))
        return Announcement(generation, partition, offset, previous, keys)

    @staticmethod
    def key_lines(names: list[tuple[str, str]]) -> bytes:
        """The lines naming ``names`` (tenant, key), each after a newline, as the projector appends them."""
        return b"".join(b"\n" + kafka_key(tenant, key) for tenant, key in names)


@lru_cache(maxsize=256)
def _at(prefix: str, generation: int) -> RedisLayout:
    """Layouts are asked for per record on the projector's hot path: make each one once (and look it up by a
    string and an int, which hash in C, rather than by a layout)."""
    return RedisLayout(prefix, generation)


class ReadScript:
    """A Lua script that only reads, run with ``EVALSHA_RO``: Redis then checks its keys as read, not written,
    so a reader whose ACL user may only read them can run it (the gateway's, `compose.security`), and a replica
    may serve it. Loaded on first use, and again after Redis forgot its scripts (a restart)."""

    def __init__(self, client: aioredis.Redis, source: str) -> None:
        self.client, self.source = client, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int] = ()) -> Any:
        try:
            return await self.client.evalsha_ro(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.client.script_load(self.source)
            return await self.client.evalsha_ro(self.sha, len(keys), *keys, *args)

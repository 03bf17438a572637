"""Sandboxes: a slice of the log copied into a topic of its own, with projections of its own.

The registry of sandboxes is itself a log: the compacted topic ``<events>.sandboxes``, keyed by
``<owner>|<name>`` (a tombstone drops one). Projection workers and gateways follow it, so creating a
sandbox needs no restart: workers start projecting its topic into its namespace, gateways start serving it.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass, field, replace

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError, for_code

from ams import kafka_clients
from ams.namespaces import ALL_TENANTS, Namespace, kafka_collision_form, pair_hash, sandbox
from ams.settings import Settings
from commands.keys import InvalidName, format_positions
from compose.readiness import log_topic_configs
from replay.cut import Cut, parse_cut
from replay.log_io import Selection, log_heads, read_log

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


class SandboxError(Exception):
    """A sandbox request that cannot be done; the message says why."""


class SandboxExists(SandboxError):
    """The sandbox, or a backend resource under one of its names, is already there: nothing was touched."""


class SandboxQuota(SandboxError):
    """The owner has as many sandboxes as it may."""


@dataclass(frozen=True)
class SandboxSpec:
    owner: str  # a tenant, or ALL_TENANTS
    name: str
    key_prefix: str | None = None
    until: str | None = None
    events: int = 0
    created_ms: int = 0
    position: str = ""  # the last copied event of each partition: a read of the sandbox waiting for it sees all
    # The live log's last offset per partition at the fork (when no ``until`` was given): the sandbox's source.
    source_offsets: dict[str, int] = field(default_factory=dict)

    def source_cut(self) -> Cut:
        if self.source_offsets:
            return Cut({int(partition): offset for partition, offset in self.source_offsets.items()})
        return parse_cut(self.until)

    @property
    def registry_key(self) -> bytes:
        return f"{self.owner}|{self.name}".encode()

    def namespace(self, settings: Settings) -> Namespace:
        return sandbox(settings, self.owner, self.name)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidName(f"sandbox name {name!r} must be 1 to 48 characters from a-z 0-9 _ -, starting with a "
                          "letter or digit")
    return name


def registry_topic(settings: Settings) -> str:
    return f"{settings.events_topic}.sandboxes"


# How long the broker may hold a follower's fetch while the registry has nothing new (it answers as soon as a
# record comes): Kafka's 0.5 s default woke every gateway and worker twice a second to decode an empty answer.
REGISTRY_FETCH_WAIT_MS = 5000


async def follow_registry(
    settings: Settings, *, once: bool = False, read_through: Callable[[int], None] | None = None
) -> AsyncGenerator[tuple[bytes, SandboxSpec | None], None]:
    """The registry as it stands (then, unless ``once``, its changes as they come). ``read_through`` is told
    the registry's offset up to which every record has been yielded and handled by the caller.

    Only the newest record of each key counts, over all of the catch-up and then over each batch: a
    follower starting (or starting again) never serves a sandbox already dropped, whose topics are gone
    (serving one waited for them, and blocked every other sandbox meanwhile). A key dropped and created
    again yields the drop first, so that whoever served the old sandbox lets it go."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", fetch_max_wait_ms=REGISTRY_FETCH_WAIT_MS)
    await consumer.start()
    try:
        tp = TopicPartition(registry_topic(settings), 0)
        beginning = (await consumer.beginning_offsets([tp]))[tp]
        consumer.assign([tp])
        consumer.seek(tp, beginning)  # at once: a fetch sent from elsewhere first would hold the seek up
        catching_up_to = (await consumer.end_offsets([tp]))[tp]
        newest: dict[bytes, bytes | None] = {}
        dropped: set[bytes] = set()
        while True:
            position = await consumer.position(tp)
            if position >= catching_up_to:
                for key, value in newest.items():
                    if value is not None and key in dropped:
                        yield key, None
                    yield key, SandboxSpec(**orjson.loads(value)) if value is not None else None
                if read_through is not None:
                    read_through(position)
                if once:
                    return
                newest, dropped, catching_up_to = {}, set(), 0  # caught up: now each batch as it comes
            for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                newest[record.key] = record.value
                if record.value is None:
                    dropped.add(record.key)
    finally:
        await kafka_clients.stop(consumer)


async def list_sandboxes(settings: Settings) -> dict[bytes, SandboxSpec]:
    found: dict[bytes, SandboxSpec] = {}
    async for key, spec in follow_registry(settings, once=True):
        if spec is None:
            found.pop(key, None)
        else:
            found[key] = spec
    return found


async def _register(settings: Settings, key: bytes, spec: SandboxSpec | None) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(registry_topic(settings), orjson.dumps(asdict(spec)) if spec else None, key=key)
    finally:
        await kafka_clients.stop(producer)


async def create_sandbox(settings: Settings, owner: str, name: str, *, key_prefix: str | None = None,
                         until: str | None = None) -> SandboxSpec:
    """Copy the matching slice of the live log into the sandbox's topic (one transaction), then register it.

    Registration comes last: a create that fails on the way deletes the topics it made, so a sandbox is
    either registered whole or not at all. Topics already there (another sandbox's, or a leftover) are a
    SandboxExists before anything is made."""
    check_name(name)
    registered = await list_sandboxes(settings)
    if f"{owner}|{name}".encode() in registered:
        raise SandboxExists(f"a sandbox named {name!r} already exists; drop it first or choose another name")
    owned = sum(1 for spec in registered.values() if spec.owner == owner)
    if owned >= settings.max_sandboxes_per_tenant:
        raise SandboxQuota(f"{owner!r} has {owned} sandboxes, the most it may have "
                           f"(AMS_MAX_SANDBOXES_PER_TENANT={settings.max_sandboxes_per_tenant}); drop one first")
    namespace = sandbox(settings, owner, name)
    source: dict[str, int] = {}
    if until is None:
        heads = await log_heads(settings, settings.events_topic)
        source = {str(partition): head - 1 for partition, head in heads.items()}
    spec = SandboxSpec(owner, name, key_prefix, until, source_offsets=source)
    await _create_topics(settings, list(namespace.topics))
    try:
        events, last = await _copy(settings, spec, namespace)
        spec = replace(spec, events=events, created_ms=int(time.time() * 1000), position=format_positions(last))
        await _register(settings, spec.registry_key, spec)
    except BaseException:
        await _delete_topics(settings, list(namespace.topics))
        raise
    return spec


async def _copy(settings: Settings, spec: SandboxSpec, namespace: Namespace) -> tuple[int, dict[int, int]]:
    """Copy the sandbox's slice of the live log into its topic, in one transaction; how many events went, and
    the last offset written per partition."""
    selection = Selection(None if spec.owner == ALL_TENANTS else spec.owner, spec.key_prefix, spec.source_cut())
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", max_request_size=8 << 20,
                                transactional_id=f"ams-sandbox-{pair_hash(spec.owner, spec.name)}",
                                transaction_timeout_ms=900_000)
    await producer.start()
    sent = []
    try:
        async with producer.transaction():
            async for record, event in read_log(settings, settings.events_topic, selection):
                if event is None:
                    continue  # poison stays in the live log's dead-letter topic
                # Same partition as in the live log, so every key keeps its order and its routing.
                sent.append(await producer.send(namespace.topic, record.value, key=record.key,
                                                partition=record.partition, headers=list(record.headers)))
        last: dict[int, int] = {}
        for metadata in [await future for future in sent]:
            last[metadata.partition] = max(metadata.offset, last.get(metadata.partition, -1))
    finally:
        await kafka_clients.stop(producer)
    return len(sent), last


async def drop_sandbox(settings: Settings, owner: str, name: str) -> SandboxSpec:
    """Unregister the sandbox and delete its topics; projection workers then drop its state, and gateways
    its FAISS view (held in memory only)."""
    key = f"{owner}|{check_name(name)}".encode()
    spec = (await list_sandboxes(settings)).get(key)
    if spec is None:
        raise SandboxError(f"no sandbox named {name!r}")
    await _register(settings, key, None)
    await _delete_topics(settings, list(spec.namespace(settings).topics))
    return spec


async def _delete_topics(settings: Settings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        found = [topic for topic in topics if topic in existing]
        if found:
            await admin.delete_topics(found)
    except UnknownTopicOrPartitionError:
        pass
    finally:
        await kafka_clients.stop(admin)


async def _create_topics(settings: Settings, topics: list[str]) -> None:
    """The sandbox's log and embeddings stream, configured like the live ones (same partitions, kept forever).

    Any of them already there, or colliding with a topic that is (Kafka reads ``.`` as ``_``), is a
    SandboxExists and nothing is created; one the broker refuses otherwise takes the others made with it."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        existing = {kafka_collision_form(topic): topic for topic in await admin.list_topics()}
        taken = [existing[kafka_collision_form(topic)] for topic in topics if kafka_collision_form(topic) in existing]
        if taken:
            raise SandboxExists(f"the sandbox's topics are taken: {', '.join(taken)} already exist(s); "
                                "nothing was created")
        response = await admin.create_topics(
            [NewTopic(topic, settings.partitions, 1, topic_configs=log_topic_configs()) for topic in topics])
    finally:
        await kafka_clients.stop(admin)
    refused = {topic: (code, message[0] if message else "") for topic, code, *message in response.topic_errors
               if code != 0}
    if refused:
        await _delete_topics(settings, [topic for topic in topics if topic not in refused])
        reasons = "; ".join(f"{topic}: {for_code(code).__name__} {message or ''}".rstrip()
                            for topic, (code, message) in refused.items())
        error = SandboxExists if any(_taken(code, message) for code, message in refused.values()) else SandboxError
        raise error(f"Kafka refused the sandbox's topics ({reasons}); nothing was kept")


def _taken(code: int, message: str | None) -> bool:
    """Whether Kafka refused a topic because one of that name exists: the same name, or one Kafka reads as equal
    (``.`` as ``_``), which the check before creating misses when the caller may not see that topic (its ACLs
    let the gateway describe only topics under the names AMS uses)."""
    name = for_code(code).__name__
    return name == "TopicAlreadyExistsError" or (name == "InvalidTopicError" and "collides" in (message or ""))

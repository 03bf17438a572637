"""The projector applies each offset once and in order, whatever order the stream hands records over in.

Real Kafka (a topic of its own) and real Redis (a namespace of its own); the records are handed to the
projector as a consumer may after a re-seek: from past the checkpoint first, and with repeats.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams.settings import Settings
from commands.envelope import PATCH, PUT, Event, encode, now_ms
from commands.fold import fold
from commands.keys import kafka_key, partition_for
from projections.dead_letters import DeadLetters
from projections.log_reader import PartitionReader
from projections.projector import Projector, RawRecord
from projections.redis_kv import RedisSink, decode_record
from projections.redis_layout import RedisLayout

pytestmark = pytest.mark.stack


@pytest.fixture
async def topic(settings: Settings) -> AsyncIterator[str]:
    name = f"ams.test.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def test_records_past_a_gap_or_repeated_are_applied_once_in_log_order(
    settings: Settings, topic: str, tenant: str
) -> None:
    ts = now_ms()
    events = [Event(PUT, tenant, "k", {"n": 0}, ts=ts, command_id="c0")] + [
        Event(PATCH, tenant, "k", {f"p{n}": n}, ts=ts + n, command_id=f"c{n}") for n in range(1, 6)]
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all")
    await producer.start()
    try:
        records = []
        for event in events:
            sent = await producer.send_and_wait(topic, encode(event), partition=0)
            records.append(RawRecord(0, sent.offset, encode(event), [], event.ts))
    finally:
        await producer.stop()
    sink = RedisSink(settings.redis_url, RedisLayout(f"test-{uuid.uuid4().hex[:8]}"), partitions=1)
    letters = DeadLetters(settings.kafka, settings.dlq_topic, topic)
    projector = Projector(sink, letters, settings.default_tenant, PartitionReader(settings.kafka, topic))
    try:
        await projector.load_checkpoints(assigned=[0])
        # As after a re-seek: the stream starts past the checkpoint (offsets 0 and 1 never handed over),
        # and hands offsets 3 and 4 over twice.
        await projector.handle([records[2], records[3], records[4], records[3], records[4], records[5]])
        home = partition_for(kafka_key(tenant, "k"), 1)
        stored = decode_record(await sink.client.hgetall(sink.layout_of(home).record(home, tenant, "k")))  # type: ignore[arg-type]
        expected, outcomes = fold([(event, record.offset) for event, record in zip(events, records, strict=True)])
        assert stored == expected
        assert projector.checkpoints[0] == records[-1].offset
        assert all(outcome.accepted for outcome in outcomes)
        outcome_keys = [sink.layout.outcome(0, record.offset) for record in records]
        assert await sink.client.mget(outcome_keys) == [None] * len(records)  # nothing was a duplicate
    finally:
        await letters.close()
        await sink.close()

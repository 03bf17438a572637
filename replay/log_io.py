"""`ams log export` / `ams log import`: a slice of the log as JSON lines, with positions.

One line per event: ``{"partition": 3, "offset": 42, "timestamp": 1732442400000, "key": "<kafka key>",
"headers": {...}, "event": <the envelope as JSON>}``. Records that are not events (poison) are exported
with ``"raw"`` (base64) instead of ``"event"`` only when no filter is given, so a full export is exact.
Import appends the events, in order, to a topic (keys and headers kept, so each key keeps its order).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ams import kafka_clients
from ams.settings import Settings
from commands.envelope import Event, MalformedEvent, decode
from projections.feed import read_before
from replay.cut import EVERYTHING, Cut, PositionNotInLog


@dataclass(frozen=True)
class Selection:
    """Which events of the log a slice keeps."""

    tenant: str | None = None
    key_prefix: str | None = None
    cut: Cut = EVERYTHING

    @property
    def filtered(self) -> bool:
        return self.tenant is not None or self.key_prefix is not None

    def keeps(self, record: ConsumerRecord, event: Event | None) -> bool:
        if not self.cut.keeps(record.partition, record.offset, record.timestamp):
            return False
        if event is None:
            return not self.filtered
        return (self.tenant is None or event.tenant == self.tenant) and (
            self.key_prefix is None or event.key.startswith(self.key_prefix))


def progress(description: str, total: int) -> Progress:
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} rec/s"),
                    TimeRemainingColumn(), transient=False)


Decoded = tuple[ConsumerRecord, Event | None]


async def read_log(settings: Settings, topic: str, selection: Selection) -> AsyncIterator[Decoded]:
    """Every committed record of ``topic`` up to its current end (or the cut), decoded, with a progress bar."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, number) for number in range(await _partition_count(settings, topic))]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        cut = selection.cut
        if cut.offsets and cut.until_ms is None and set(cut.offsets) != {tp.partition for tp in partitions}:
            cut = await _with_time_of_named_positions(consumer, cut, topic)
        selection = Selection(selection.tenant, selection.key_prefix, cut)
        for tp in partitions:
            last = cut.last_offset(tp.partition)
            if last is not None:
                ends[tp] = min(ends[tp], last + 1)
            consumer.seek(tp, starts[tp])
        total = sum(max(0, ends[tp] - starts[tp]) for tp in partitions)
        with progress(f"reading {topic}", total) as bar:
            task = bar.add_task("read", total=total)
            async for windows in read_before(consumer, ends):
                for records in windows.values():
                    for record in records:
                        event = _decoded(record, settings)
                        if selection.keeps(record, event):
                            yield record, event
                    bar.advance(task, len(records))
    finally:
        await kafka_clients.stop(consumer)


async def _with_time_of_named_positions(consumer: AIOKafkaConsumer, cut: Cut, topic: str) -> Cut:
    """A token names some partitions; the others are cut at the newest time among the named events."""
    times = []
    for partition, offset in cut.offsets.items():
        tp = TopicPartition(topic, partition)
        consumer.seek(tp, offset)
        records = (await consumer.getmany(tp, timeout_ms=5000, max_records=1)).get(tp, [])
        if not records:
            raise PositionNotInLog(f"position {partition}:{offset} is not in {topic}; name a position that exists")
        times.append(records[0].timestamp)
    return Cut(cut.offsets, max(times))


async def _partition_count(settings: Settings, topic: str) -> int:
    producer = AIOKafkaProducer(**settings.kafka.client_options())
    await producer.start()
    try:
        return len(await producer.partitions_for(topic))
    finally:
        await kafka_clients.stop(producer)


def _decoded(record: ConsumerRecord, settings: Settings) -> Event | None:
    try:
        return decode(record.value, record.headers, default_tenant=settings.default_tenant,
                      record_ts=record.timestamp)
    except MalformedEvent:
        return None


def to_line(record: ConsumerRecord, event: Event | None) -> bytes:
    line: dict[str, object] = {
        "partition": record.partition, "offset": record.offset, "timestamp": record.timestamp,
        "key": record.key.decode(errors="replace") if record.key is not None else None,
        "headers": {name: value.decode(errors="replace") for name, value in record.headers},
    }
    if event is not None:
        line["event"] = orjson.loads(record.value)
    else:
        line["raw"] = base64.b64encode(record.value or b"").decode()
    return orjson.dumps(line) + b"\n"


async def export_log(settings: Settings, out: IO[bytes], selection: Selection, topic: str | None = None) -> int:
    count = 0
    async for record, event in read_log(settings, topic or settings.events_topic, selection):
        out.write(to_line(record, event))
        count += 1
    return count


async def import_log(settings: Settings, lines: Iterable[bytes], topic: str) -> int:
    """Append every exported line to ``topic`` in file order, in one transaction: all of it or nothing."""
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all",
                                transactional_id=f"ams-import-{topic}", max_request_size=8 << 20, linger_ms=5,
                                transaction_timeout_ms=900_000)
    await producer.start()
    count = 0
    try:
        async with producer.transaction():
            for raw in lines:
                if not raw.strip():
                    continue
                line = orjson.loads(raw)
                value = orjson.dumps(line["event"]) if "event" in line else base64.b64decode(line["raw"])
                key = line["key"].encode() if line.get("key") is not None else None
                headers = [(name, str(text).encode()) for name, text in (line.get("headers") or {}).items()]
                await producer.send(topic, value, key=key, headers=headers)
                count += 1
    finally:
        await kafka_clients.stop(producer)
    return count


async def log_heads(settings: Settings, topic: str) -> dict[int, int]:
    """The offset the next committed record of each partition will get."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, number) for number in range(await _partition_count(settings, topic))]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items()}
    finally:
        await kafka_clients.stop(consumer)

"""What differs between a sandbox and live memory, or between a sandbox and the live state it was cut from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ams.settings import Settings
from commands.envelope import now_ms
from commands.fold import Record, fold, visible
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from replay.log_io import Selection, read_log
from replay.sandboxes import SandboxSpec

AGAINST = ("live", "source")


@dataclass(frozen=True)
class Difference:
    key: str
    sandbox: Any  # the value a reader of the sandbox sees (None: absent)
    other: Any  # the value a reader of live memory (or of the source cut) sees


async def _hot_records(settings: Settings, prefix: str, tenant: str) -> dict[str, Record]:
    sink = RedisSink(settings.redis_url, RedisLayout(prefix), settings.partitions)
    try:
        return await sink.records(tenant)
    finally:
        await sink.close()


async def _source_records(settings: Settings, spec: SandboxSpec, tenant: str) -> dict[str, Record]:
    """The live log up to the sandbox's cut, folded: the state the sandbox started from."""
    events: dict[str, list[tuple[Any, int]]] = {}
    selection = Selection(tenant, spec.key_prefix, spec.source_cut())
    async for record, event in read_log(settings, settings.events_topic, selection):
        if event is not None and event.type.startswith("kv."):
            events.setdefault(event.key, []).append((event, record.offset))
    folded = {key: fold(history)[0] for key, history in events.items()}
    return {key: record for key, record in folded.items() if record is not None}


async def diff_sandbox(settings: Settings, spec: SandboxSpec, tenant: str, against: str = "live") -> list[Difference]:
    if against not in AGAINST:
        raise ValueError(f"diff against {against!r}: choose one of {', '.join(AGAINST)}")
    mine = await _hot_records(settings, spec.namespace(settings).redis_prefix, tenant)
    if against == "live":
        theirs = await _hot_records(settings, settings.redis_prefix, tenant)
    else:
        theirs = await _source_records(settings, spec, tenant)
    now = now_ms()

    def seen(records: dict[str, Record], key: str) -> Any:
        record = visible(records.get(key), now)
        return record.value if record is not None else None

    keys = sorted(key for key in {*mine, *theirs} if spec.key_prefix is None or key.startswith(spec.key_prefix))
    return [Difference(key, seen(mine, key), seen(theirs, key)) for key in keys
            if seen(mine, key) != seen(theirs, key)]

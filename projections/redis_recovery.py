"""The Redis projection that notices when Redis lost its data, and restores it from PostgreSQL.

Redis may forget (FLUSHALL, a restart without persistence, a failover to an empty replica). Every
partition carries a ``live`` marker that only this projector sets, after a recovery; Redis forgets it
with the rest. So a missing marker, or a checkpoint older than the one the projector last wrote, means
"incomplete": the gateway stops trusting that partition and reads PostgreSQL, and the projector

1. clears what is left of the partition, unless Redis still has a checkpoint (then its state is a
   consistent, if older, fold of the log and is kept);
2. restores PostgreSQL's current state of the partition, as one snapshot at PostgreSQL's checkpoint
   (if PostgreSQL is unavailable, it starts from an empty partition instead);
3. replays the log after that checkpoint up to its end, through the ordinary batch path;
4. sets the marker: Redis again holds every event anyone was told about.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import asyncpg

from commands.envelope import now_ms
from projections.postgres import POSTGRES_TRANSIENT
from projections.postgres_snapshot import PostgresSnapshots
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from projections.redis_restore import clear_partition, restore_partition
from projections.sink import TRANSIENT, CheckpointMoved, RecoverableSink

log = logging.getLogger("ams.projector")

# PostgreSQL is unavailable, or has no projection yet: restore from the log alone.
SNAPSHOT_UNAVAILABLE = (*TRANSIENT, *POSTGRES_TRANSIENT, asyncpg.UndefinedTableError)


class RecoveringRedisSink(RedisSink, RecoverableSink):
    def __init__(
        self, redis_url: str, layout: RedisLayout, partitions: int, snapshots: PostgresSnapshots | None,
        **options: Any,
    ) -> None:
        super().__init__(redis_url, layout, partitions, **options)
        self.snapshots = snapshots

    async def incomplete(self, partitions: Collection[int], expected: Mapping[int, int]) -> list[int]:
        ordered = sorted(partitions)
        if not ordered:
            return []
        await self.refresh_generations()  # a flush loses the generation pointers too
        names = [self.layout_of(p).live(p) for p in ordered] + [self.layout_of(p).checkpoint(p) for p in ordered]
        values = await self.client.mget(names)
        markers, checkpoints = values[:len(ordered)], values[len(ordered):]
        return [
            partition for partition, marker, checkpoint in zip(ordered, markers, checkpoints, strict=True)
            if marker is None or (int(checkpoint) if checkpoint is not None else -1) < expected.get(partition, -1)
        ]

    async def restore(self, partition: int) -> int:
        self.cache.clear()  # Redis lost data this sink may still remember
        layout = self.layout_of(partition)
        await self.client.delete(layout.live(partition))
        kept = await self.client.get(layout.checkpoint(partition))
        if kept is not None:
            log.warning("redis projection: partition %d is incomplete but consistent at checkpoint %d; "
                        "catching it up from the log", partition, int(kept))
            return int(kept)
        cleared = await clear_partition(self.client, layout, partition)
        if self.snapshots is None:
            return -1
        try:
            async with self.snapshots.partition(partition) as snapshot:
                restored = await restore_partition(self.client, layout, snapshot, now_ms())
        except SNAPSHOT_UNAVAILABLE as error:
            log.warning("redis projection: cannot read PostgreSQL's snapshot of partition %d (%r); "
                        "replaying the partition from the beginning of the log instead", partition, error)
            await clear_partition(self.client, layout, partition)
            return -1
        if restored is None:
            found = await self.client.get(layout.checkpoint(partition))
            raise CheckpointMoved(partition, -1, int(found) if found is not None else -1)
        records, checkpoint = restored
        log.warning("redis projection: partition %d had lost its data (%d keys left); restored %d records from "
                    "PostgreSQL at offset %d, replaying the log after it", partition, cleared, records, checkpoint)
        return checkpoint

    async def mark_complete(self, partition: int) -> None:
        await self.client.set(self.layout_of(partition).live(partition), 1)

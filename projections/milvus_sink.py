"""`ams project milvus`: the Milvus view, a projection worker of ``memory.embeddings``.

Exactly-once effects without a transaction spanning Milvus: every row is upserted by its key and only
when the operation's version is newer than the row's (equal, for a repair), and the checkpoint row is
written after the batch's rows. A crash in between replays the batch: the version check turns every
repeated operation into a no-op, so the replay is harmless. The expected checkpoint is checked before
the batch, so a worker that lost its partitions stops instead of moving the checkpoint backwards.

A batch looks up the live generation once, first, and writes only into it. When a rebuild switches
generations, the batch in progress finishes in the retired one (harmlessly), and the next finds the new
generation's checkpoint instead of the one it expected. Ahead of it: the projector skips forward. Behind
it (the new generation lacks the batch that was in progress): the sink is then a `RecoverableSink` whose
partition went back in time, and the projector catches it up with a private reader of the topic, as it
does for a Redis that lost data, instead of seeking the worker's consumer backwards. Re-applied
operations are no-ops, by version.

Most batches change nothing here: the embedder sends a mark for every batch of ``memory.events``, vectors or
not. Writing a checkpoint row for each cost Milvus Lite and this worker about 7 ms of CPU per write to AMS,
on a 2-core machine the largest share of a write's total. So the live worker holds a mark-only batch's
checkpoint in memory when it wrote one less than HOLD_SECONDS ago, and writes it with the next batch that
changes rows, or at the next periodic check (`write_held`, about a second). Nothing is lost by holding it: a
worker that stops replays the marks from the stored checkpoint, and marks change no rows. Readers waiting
for a mark (a vector search on Milvus carrying a session token) wait at most that second longer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymilvus.exceptions import ConnectError, MilvusException, MilvusUnavailableException

from ams.settings import Settings
from commands.fold import Outcome
from projections.embeddings import MARK, UPSERT, EmbeddingOp
from projections.milvus_store import MilvusStore, Row
from projections.sink import NO_CHECKPOINT, TRANSIENT, CheckpointMoved, Positioned, RecoverableSink

log = logging.getLogger("ams.projector")

HOLD_SECONDS = 0.25  # a mark-only batch within this long of the partition's last checkpoint write is held


@dataclass
class Held:
    """A partition's checkpoint that mark-only batches moved in memory only: Milvus still holds ``stored``."""

    stored: int
    through: int
    mark: int


def newest_per_key(ops: Sequence[EmbeddingOp]) -> dict[tuple[str, str], EmbeddingOp]:
    """The operation that decides each key: the highest version (a repair wins a tie, as it would in order)."""
    newest: dict[tuple[str, str], EmbeddingOp] = {}
    for op in ops:
        current = newest.get((op.tenant, op.key))
        if current is None or op.version > current.version or (op.version == current.version and op.repair):
            newest[(op.tenant, op.key)] = op
    return newest


class MilvusSink(RecoverableSink):
    name = "milvus"
    source = "embeddings"
    transient_errors = (*TRANSIENT, ConnectError, MilvusUnavailableException)

    def __init__(self, settings: Settings, *, generation: int | None = None) -> None:
        """``generation``: the one a rebuild fills; None (the worker) follows the live one."""
        self.settings, self.generation = settings, generation
        self._store: MilvusStore | None = None
        self._held: dict[int, Held] = {}
        # Each partition's last checkpoint this sink wrote: (offset, time.monotonic() of the write).
        self._written: dict[int, tuple[int, float]] = {}

    @property
    def store(self) -> MilvusStore:
        if self._store is None:
            self._store = MilvusStore(self.settings.milvus_endpoint, self.settings.vector_ef_search,
                                      self.settings.vector_hnsw_m, self.settings.vector_ef_construction,
                                      generation=self.generation)
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            self._store.close()

    async def checkpoints(self) -> dict[int, int]:
        """The stored checkpoints, with the ones held in memory over them (while Milvus still has what they
        were held over: otherwise something else moved it, and the hold is forgotten)."""
        rows = await asyncio.to_thread(self._live_checkpoints)
        stored = {partition: offset for partition, (offset, _) in rows.items()}
        for partition, held in list(self._held.items()):
            if stored.get(partition, NO_CHECKPOINT) == held.stored:
                stored[partition] = held.through
            else:
                del self._held[partition]
        return stored

    async def incomplete(self, partitions: Collection[int], expected: Mapping[int, int]) -> list[int]:
        """Partitions a rebuild's switch left behind the worker (see the module's docstring)."""
        stored = await self.checkpoints()
        return [p for p in partitions if stored.get(p, NO_CHECKPOINT) < expected.get(p, NO_CHECKPOINT)]

    async def restore(self, partition: int) -> int:
        return (await self.checkpoints()).get(partition, NO_CHECKPOINT)

    async def mark_complete(self, partition: int) -> None:
        """Nothing to mark: readers wait for the embedder's marks, which the new generation keeps itself."""

    async def apply(
        self, partition: int, events: Sequence[Positioned[Any]], through: int, expected: int
    ) -> list[Outcome | None]:
        ops = [item.event for item in events]
        if not self._hold(partition, ops, through, expected):
            await asyncio.to_thread(self._apply, partition, ops, through, expected)
        return [None] * len(events)

    async def write_held(self) -> None:
        """Write the checkpoints held in memory."""
        for partition, held in list(self._held.items()):
            try:
                await asyncio.to_thread(self._apply, partition, [], held.through, held.through)
            except CheckpointMoved as moved:  # the projector's next check or batch finds it moved, and follows
                log.warning("milvus projection: a held checkpoint was not written: %s", moved)

    def _hold(self, partition: int, ops: list[EmbeddingOp], through: int, expected: int) -> bool:
        """Hold a mark-only batch's checkpoint in memory instead of writing it (see the module's docstring)."""
        if not self.store.following or any(op.op != MARK for op in ops):
            return False
        held = self._held.get(partition)
        if held is None:
            offset, at = self._written.get(partition, (NO_CHECKPOINT, 0.0))
            if offset != expected or time.monotonic() - at >= HOLD_SECONDS:
                return False  # not right after a write of this sink's own: write, and check, as usual
        elif held.through != expected:
            return False  # the projector re-read its checkpoints meanwhile: write, and check, as usual
        marks = [op.through for op in ops if op.partition == partition]
        self._held[partition] = Held(stored=held.stored if held else expected, through=through,
                                     mark=max([held.mark if held else NO_CHECKPOINT, *marks]))
        return True

    def _live_checkpoints(self) -> dict[int, tuple[int, int]]:
        self.store.follow_live()
        return self.store.checkpoints(range(self.settings.partitions))

    def _apply(self, partition: int, ops: list[EmbeddingOp], through: int, expected: int) -> None:
        generation = self.store.follow_live()
        try:
            self._apply_to_generation(partition, ops, through, expected)
        except MilvusException:
            if self.store.following and self.store.live_generation() != generation:
                # its generation was retired and dropped under the batch: carry on in the new one
                raise CheckpointMoved(partition, expected, NO_CHECKPOINT, " (a rebuilt generation went live)") from None
            raise

    def _apply_to_generation(self, partition: int, ops: list[EmbeddingOp], through: int, expected: int) -> None:
        held = self._held.pop(partition, None)
        if held is not None and held.through != expected:
            held = None  # the projector moved on from another checkpoint: the hold no longer applies
        stored = self.store.checkpoints([partition]).get(partition)
        found = stored[0] if stored else NO_CHECKPOINT
        if found != (held.stored if held else expected):
            raise CheckpointMoved(partition, expected, found)
        mark = max(stored[1] if stored else NO_CHECKPOINT, held.mark if held else NO_CHECKPOINT)
        by_tenant: dict[str, list[EmbeddingOp]] = {}
        for op in newest_per_key([op for op in ops if op.op != MARK]).values():
            by_tenant.setdefault(op.tenant, []).append(op)
        for tenant, tenant_ops in by_tenant.items():
            self._apply_tenant(tenant, tenant_ops)
        marks = [op.through for op in ops if op.op == MARK and op.partition == partition]
        self.store.write_checkpoint(partition, through, max([mark, *marks]))
        self._written[partition] = (through, time.monotonic())

    def _apply_tenant(self, tenant: str, ops: list[EmbeddingOp]) -> None:
        vectors = [(op.vector, op.metric) for op in ops if op.op == UPSERT and op.vector is not None]
        if self.store.tenant_shape(tenant) is None:
            if not vectors:
                return  # deletes of a tenant that has no vectors here: nothing to do
            self.store.ensure_tenant(tenant, len(vectors[0][0]), vectors[0][1])
        current = self.store.versions(tenant, [op.key for op in ops])
        rows = []
        for op in ops:
            known = current.get(op.key)
            if known is not None and (op.version < known or (op.version == known and not op.repair)):
                continue
            vector = op.vector if op.op == UPSERT else None
            rows.append(Row(op.key, op.version, vector, op.value, op.expires_at))
        if rows:
            self.store.upsert(tenant, rows)

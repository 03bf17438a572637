"""The port every projection store implements, and the rule that makes replays harmless.

A sink applies a batch of one partition's events **together with** that partition's checkpoint, in one
atomic step of its own store. Delivery is at-least-once; the checkpoint turns it into exactly-once
effects: events at or below the checkpoint are skipped, and a worker that finds the stored checkpoint
moved under it (another worker, a flushed store) stops and re-reads it instead of writing over it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar

import msgspec

from commands.fold import Outcome

NO_CHECKPOINT = -1

# Errors that mean "the store is unreachable right now": retried with backoff, never dead-lettered.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, OSError, TimeoutError)


T = TypeVar("T")


class Positioned(msgspec.Struct, Generic[T], frozen=True, gc=False):
    """An event with the offset it has in its partition: its position, and the version it gives a key.

    The event is a `commands.envelope.Event` for sinks of ``memory.events``, and a
    `projections.embeddings.EmbeddingOp` for sinks of ``memory.embeddings``. A msgspec struct, like the
    event: a projector makes one per event.
    """

    event: T
    offset: int
    routed: bool = False  # known to be in the partition its tenant and key route to (else it is computed)


class CheckpointMoved(RuntimeError):
    """The store's checkpoint is not the one the worker expected; nothing of the batch was applied."""

    def __init__(self, partition: int, expected: int, found: int, why: str = "") -> None:
        super().__init__(
            f"partition {partition}: expected checkpoint {expected}, store has {found}{why}; "
            "re-reading the checkpoint and resuming from there"
        )
        self.partition, self.expected, self.found = partition, expected, found


class ProjectionSink(ABC):
    name: ClassVar[str]
    # The topic the sink reads: "events" (memory.events) or "embeddings" (memory.embeddings).
    source: ClassVar[str] = "events"
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = TRANSIENT

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect, create what the store needs."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def write_held(self) -> None:  # noqa: B027 - optional hook
        """Write what the sink applied in memory only (`projections.milvus_sink` holds mark-only checkpoints).

        Called by the worker's periodic check; a sink that writes every batch at once has nothing to do."""

    async def drop(self) -> int:
        """Remove every trace of this sink's namespace (a dropped sandbox); returns how many things went.

        Only the projections that project sandboxes (`projections.worker.SANDBOXED`) implement it."""
        raise TypeError(f"the {self.name} projection does not project sandboxes, so it has nothing to drop")

    @abstractmethod
    async def checkpoints(self) -> dict[int, int]:
        """The last applied offset of every partition this store has seen."""

    @abstractmethod
    async def apply(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        """Apply ``events`` (in log order, all above ``expected``) and move the checkpoint to ``through``.

        ``through`` may lie beyond the last event (records that were dead-lettered still move the
        checkpoint). Raises CheckpointMoved, having changed nothing, when the stored checkpoint is not
        ``expected``. Returns each event's outcome (None for events the fold does not decide).
        """


class RecoverableSink(ProjectionSink):
    """A sink whose store can lose data on its own (a cache such as Redis), notices it, and restores itself.

    While a partition is incomplete, readers must not trust it; the projector restores it, catches it up
    with the log and then marks it complete, before it applies anything else to that partition.
    """

    @abstractmethod
    async def incomplete(self, partitions: Collection[int], expected: Mapping[int, int]) -> list[int]:
        """The partitions that may lack events they had applied: their data was lost, they were never
        marked complete, or their checkpoint is older than ``expected`` (the projector's own memory)."""

    @abstractmethod
    async def restore(self, partition: int) -> int:
        """Bring the partition to a consistent state at some checkpoint, and return it (-1: empty).

        Once the store is consistent again, the projector replays the log after that checkpoint."""

    @abstractmethod
    async def mark_complete(self, partition: int) -> None:
        """The partition holds every event it held before the loss: readers may trust it again."""

"""The port every projection store implements, and the rule that makes replays harmless.

A sink applies a batch of one partition's events **together with** that partition's checkpoint, in one
atomic step of its own store. Delivery is at-least-once; the checkpoint turns it into exactly-once
effects: events at or below the checkpoint are skipped, and a worker that finds the stored checkpoint
moved under it (another worker, a flushed store) stops and re-reads it instead of writing over it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from commands.fold import Outcome

NO_CHECKPOINT = -1

# Errors that mean "the store is unreachable right now": retried with backoff, never dead-lettered.
TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, OSError, TimeoutError)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Positioned(Generic[T]):
    """An event with the offset it has in its partition: its position, and the version it gives a key.

    The event is a `commands.envelope.Event` for sinks of ``memory.events``, and a
    `projections.embeddings.EmbeddingOp` for sinks of ``memory.embeddings``.
    """

    event: T
    offset: int


class CheckpointMoved(RuntimeError):
    """The store's checkpoint is not the one the worker expected; nothing of the batch was applied."""

    def __init__(self, partition: int, expected: int, found: int) -> None:
        super().__init__(
            f"partition {partition}: expected checkpoint {expected}, store has {found}; "
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

"""The event log's transactional producer recovers from a fatal error (found by the fuzz after the fault tour)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.producer.transaction_manager import TransactionState

from ams.settings import Settings
from commands.envelope import PUT, Event, now_ms
from commands.log import EventLog

pytestmark = pytest.mark.stack


async def test_a_batch_after_a_fatal_transactional_error_gets_a_new_producer_and_commits(settings: Settings) -> None:
    log = EventLog(settings.kafka, settings.events_topic, transactional_id=f"test-{uuid.uuid4()}")
    await log.start()
    try:
        # What a broker restart can leave behind: aiokafka's producer refuses every later transaction.
        log._transactional._txn_manager._transition_to(TransactionState.FATAL_ERROR)  # type: ignore[attr-defined]
        event = Event(PUT, "acme", "fatal/k", 1, ts=now_ms(), id=str(uuid.uuid4()))
        [position] = await log.append_atomically([event])
        assert position.offset >= 0
    finally:
        await log.stop()

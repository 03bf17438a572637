"""A Faust app whose consumer reads only committed records.

Faust reads ``read_committed`` only in its own exactly-once mode, which would also move its offset
commits into transactions. AMS keeps its checkpoints in the sinks and needs only the isolation level:
a batch appended in one Kafka transaction must become visible to a projection all at once, or never
(an aborted batch). So this app keeps Faust's at-least-once processing and sets the isolation level on
the aiokafka consumer before it starts (aiokafka builds its fetcher from that attribute at start).
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class ProjectionApp(faust.App):
    def _new_transport(self) -> faust_aiokafka.Transport:
        return _Transport(self.conf.broker_consumer, self)

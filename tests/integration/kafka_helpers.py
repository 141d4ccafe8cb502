"""Small helpers of the Kafka integration tests: read a topic as a read_committed
consumer would, and make valid envelopes."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.common.envelope import encode, make
from services.common.kafka import make_consumer, make_producer

LANE_KEY = "420100>420600>van-9.6"


def rested(load_id: str) -> dict:
    return make("load.rested", {"load_id": load_id}, LANE_KEY, "test", 1_767_225_600_000)


async def read_committed(
    bootstrap: str, topic: str, *, until: int, timeout_s: float = 20.0
) -> list[ConsumerRecord]:
    """Every record of topic a read_committed reader sees, once at least `until` came
    (or timeout_s passed); then reads on for a moment to catch any extra."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < until and loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records


def load_ids(records: list[ConsumerRecord]) -> list[str]:
    from services.common.envelope import decode

    return [decode(r.value)["data"]["load_id"] for r in records]


__all__ = ["LANE_KEY", "encode", "final_committed", "load_ids", "read_committed", "rested"]


async def final_committed(
    bootstrap: str, group_id: str, partitions: list[TopicPartition], transactional_id: str
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets once the last transaction of transactional_id is
    complete: a producer with that id is started first (its InitProducerId waits for
    the broker to finish the transaction), as a restarting service does."""
    producer = make_producer(bootstrap, transactional_id=transactional_id)
    await producer.start()
    consumer = make_consumer(bootstrap, group_id=group_id, partitions=partitions)
    await consumer.start()
    try:
        return {tp: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()
        await producer.stop()

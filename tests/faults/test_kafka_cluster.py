"""The 3-broker KRaft cluster of `wlex dev up --brokers 3`: replication 3, min ISR 2.

Kill -9 of the partition leader in the middle of a stream of acks=all, idempotent sends:
every acknowledged record must be read back exactly once afterwards.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from tests.conftest import new_state_dir, start_stack, stop_stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

MESSAGES = 6000
KILL_AFTER_ACKED = 2000
SEND_DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def cluster():
    stack = start_stack(new_state_dir("cluster3"), brokers=3, external=False)
    yield stack
    stop_stack(stack)


async def _leader_of(bootstrap: str, topic: str) -> int:
    """The partition leader's node id; a topic just created can report no partitions or
    no leader for a moment, so ask again for up to 30 s."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            [description] = await admin.describe_topics([topic])
            partitions = description["partitions"]
            if partitions and partitions[0]["leader"] >= 0:
                return partitions[0]["leader"]
            assert time.monotonic() < deadline, f"{topic} has no leader: {description}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def test_three_brokers_replicate_topics_and_transaction_log(cluster):
    bootstrap = cluster.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        assert len((await admin.describe_cluster())["brokers"]) == 3
        # A transaction makes the broker create its transaction state log.
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            transactional_id="rf-probe",
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait("wlex.dlq", b"probe")
        finally:
            await producer.stop()
        descriptions = await admin.describe_topics(["__transaction_state", "wlex.orders"])
        for description in descriptions:
            for partition in description["partitions"]:
                assert len(partition["replicas"]) == 3, description["topic"]
    finally:
        await admin.close()


async def test_acknowledged_records_survive_kill_9_of_the_leader(cluster):
    bootstrap = cluster.kafka_bootstrap
    topic = "faults.rf3"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "2"})]
        )
    finally:
        await admin.close()
    leader = await _leader_of(bootstrap, topic)

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",  # acknowledged = written to min.insync.replicas brokers
        enable_idempotence=True,  # a retry after the failover must not write a duplicate
        linger_ms=5,
        request_timeout_ms=10000,
    )
    await producer.start()
    acked: set[int] = set()
    failed: set[int] = set()
    killed = False
    deadline = time.monotonic() + SEND_DEADLINE_S
    try:
        for start in range(0, MESSAGES, 200):
            assert time.monotonic() < deadline, "sending took too long"
            futures = {
                i: await producer.send(topic, str(i).encode()) for i in range(start, start + 200)
            }
            for i, future in futures.items():
                try:
                    await future
                    acked.add(i)
                except KafkaError:
                    failed.add(i)
            if not killed and len(acked) >= KILL_AFTER_ACKED:
                await asyncio.to_thread(cluster.kill, f"kafka-{leader}")
                killed = True
    finally:
        await producer.stop()
    assert killed
    # The two surviving brokers keep the partition writable: nearly everything is acked.
    assert len(acked) >= MESSAGES - 400, f"only {len(acked)} acknowledged, {len(failed)} failed"

    seen: list[int] = []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        read_deadline = time.monotonic() + 60
        while not acked.issubset(seen) and time.monotonic() < read_deadline:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            seen.extend(int(m.value) for m in batch.get(tp, []))
    finally:
        await consumer.stop()

    assert acked.issubset(seen), f"lost {len(acked - set(seen))} acknowledged records"
    assert len(seen) == len(set(seen)), "a record was written twice"

    # The killed broker comes back and the cluster is whole again.
    await asyncio.to_thread(cluster.start, f"kafka-{leader}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Each broker learns of the registration from the metadata log on its own
        # schedule: ask until the one we reach lists all three (at most 30 s).
        deadline = time.monotonic() + 30
        while len((await admin.describe_cluster())["brokers"]) < 3:
            assert time.monotonic() < deadline, "the restarted broker did not rejoin"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()

"""The transactional adapter against the real broker: what read_committed readers see,
where a restarted consumer resumes, and what an aborted batch leaves behind."""

import asyncio

import pytest
from aiokafka.structs import TopicPartition

from services.common.envelope import encode, make
from services.common.kafka import (
    fetch_batch,
    make_consumer,
    make_producer,
    static_partitions,
    transactional_id_for,
)
from services.common.kafka_transactions import TransactionAborted, commit_batch, run_transactional
from services.common.topics import create_topics

from .kafka_helpers import LANE_KEY, final_committed, load_ids, read_committed, rested

pytestmark = pytest.mark.integration


def echo_to(topic: str):
    """A transform: every load.rested in, the same load id out on topic."""

    def transform(batch):
        return [
            (
                topic,
                m["key"],
                make(
                    "load.rested",
                    m["data"],
                    m["key"],
                    "test",
                    m["ts"],
                    cause=m["id"],
                    id=m["id"] + ":0",
                ),
            )
            for m in batch.messages
        ]

    return transform


async def _started(*clients):
    for c in clients:
        await c.start()
    return clients


async def test_aborted_transactions_are_never_seen_and_committed_ones_are(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    orders = topic_prefix + "orders"
    producer = make_producer(kafka_bootstrap, transactional_id=topic_prefix + "writer")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(orders, encode(rested("A")), key=LANE_KEY.encode())
        await producer.begin_transaction()
        await (
            await producer.send(orders, encode(rested("B")), key=LANE_KEY.encode())
        )  # written, then aborted
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(orders, encode(rested("C")), key=LANE_KEY.encode())
    finally:
        await producer.stop()
    assert load_ids(await read_committed(kafka_bootstrap, orders, until=2)) == ["A", "C"]


async def test_offsets_committed_in_the_transaction_are_where_a_restart_resumes(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=2)
    orders, market, dlq = (topic_prefix + t for t in ("orders", "market", "dlq"))
    group = topic_prefix + "matching"
    parts = static_partitions(orders, [0, 1])
    txn_id = transactional_id_for("matching", orders, [0, 1])

    plain = make_producer(kafka_bootstrap)
    await plain.start()
    try:
        for i in range(6):
            await plain.send(orders, encode(rested(f"L{i}")), partition=i % 2)
        await plain.flush()

        # The producer first, as run_transactional does (see its docstring).
        producer, consumer = await _started(
            make_producer(kafka_bootstrap, transactional_id=txn_id),
            make_consumer(kafka_bootstrap, group_id=group, partitions=parts),
        )
        try:
            seen = 0
            while seen < 6:
                batch = await fetch_batch(consumer, max_records=4, timeout_ms=500)
                if len(batch):
                    await commit_batch(
                        consumer,
                        producer,
                        batch,
                        echo_to(market),
                        group_id=group,
                        dlq_topic=dlq,
                        source="test",
                    )
                    seen += len(batch)
        finally:
            await consumer.stop()
            await producer.stop()
        committed = await final_committed(kafka_bootstrap, group, parts, txn_id)
        assert committed == {TopicPartition(orders, 0): 3, TopicPartition(orders, 1): 3}
        assert sorted(load_ids(await read_committed(kafka_bootstrap, market, until=6))) == [
            f"L{i}" for i in range(6)
        ]

        # Restart: the same group and partition set sees only what is new.
        await plain.send(orders, encode(rested("L6")), partition=1)
        await plain.flush()
    finally:
        await plain.stop()

    stop = asyncio.Event()
    positions = {}
    batches = []

    async def on_start(consumer):
        positions.update({tp: await consumer.position(tp) for tp in parts})

    def transform(batch):
        batches.append([m["data"]["load_id"] for m in batch.messages])
        stop.set()
        return []

    await asyncio.wait_for(
        run_transactional(
            make_consumer(kafka_bootstrap, group_id=group, partitions=parts),
            lambda: make_producer(kafka_bootstrap, transactional_id=txn_id),
            transform,
            group_id=group,
            dlq_topic=dlq,
            source="test",
            stop=stop,
            on_start=on_start,
        ),
        timeout=30,
    )
    assert positions == committed
    assert batches == [["L6"]]


async def _write_loads(bootstrap: str, topic: str, n: int) -> None:
    plain = make_producer(bootstrap)
    await plain.start()
    try:
        for i in range(n):
            await plain.send(topic, encode(rested(f"L{i}")))
        await plain.flush()
    finally:
        await plain.stop()


def _huge_output(topic: str):
    # Larger than the broker takes (message.max.bytes ~1 MiB), though the client (with
    # max_request_size raised) lets it through: the broker refuses it inside the
    # transaction, after the records before it were written.
    return (topic, LANE_KEY, make("load.rested", {"load_id": "x" * 1_500_000}, LANE_KEY, "test", 1))


def _big_producer(bootstrap: str, transactional_id: str):
    return make_producer(
        bootstrap, transactional_id=transactional_id, max_request_size=4 * 1024 * 1024
    )


async def test_a_failed_transaction_is_aborted_and_the_consumer_rewound(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    orders, market, dlq = (topic_prefix + t for t in ("orders", "market", "dlq"))
    group = topic_prefix + "matching"
    parts = static_partitions(orders, [0])
    txn_id = transactional_id_for("matching", orders, [0])
    await _write_loads(kafka_bootstrap, orders, 3)

    def transform(batch):
        return echo_to(market)(batch) + [_huge_output(market)]

    producer = _big_producer(kafka_bootstrap, txn_id)
    await producer.start()
    consumer = make_consumer(kafka_bootstrap, group_id=group, partitions=parts)
    await consumer.start()
    try:
        batch = await fetch_batch(consumer, timeout_ms=5000)
        assert len(batch)
        with pytest.raises(TransactionAborted):
            await commit_batch(
                consumer, producer, batch, transform, group_id=group, dlq_topic=dlq, source="test"
            )
        # Back on the batch's first record, though nothing was ever committed.
        assert await consumer.position(parts[0]) == 0
        again = await fetch_batch(consumer, timeout_ms=5000)
        assert again.messages[0]["data"]["load_id"] == "L0"
    finally:
        await consumer.stop()
        await producer.stop()
    assert await final_committed(kafka_bootstrap, group, parts, txn_id) == {parts[0]: None}
    # The echoes written before the broker refused the huge record are invisible.
    assert await read_committed(kafka_bootstrap, market, until=1, timeout_s=2) == []


async def test_the_loop_retries_an_aborted_batch_with_a_new_producer(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    orders, market, dlq = (topic_prefix + t for t in ("orders", "market", "dlq"))
    group = topic_prefix + "matching"
    parts = static_partitions(orders, [0])
    txn_id = transactional_id_for("matching", orders, [0])
    await _write_loads(kafka_bootstrap, orders, 3)

    calls: list[list[str]] = []
    aborted: list[int] = []
    stop = asyncio.Event()

    def transform(batch):
        calls.append([m["data"]["load_id"] for m in batch.messages])
        if "L2" in calls[-1] and aborted:
            stop.set()  # the loop stops after committing this batch
        outputs = echo_to(market)(batch)
        return outputs + [_huge_output(market)] if len(calls) == 1 else outputs

    async def on_abort(consumer):
        aborted.append(await consumer.position(parts[0]))

    await asyncio.wait_for(
        run_transactional(
            make_consumer(kafka_bootstrap, group_id=group, partitions=parts),
            lambda: _big_producer(kafka_bootstrap, txn_id),
            transform,
            group_id=group,
            dlq_topic=dlq,
            source="test",
            stop=stop,
            on_abort=on_abort,
        ),
        timeout=60,
    )
    assert aborted == [0]
    assert calls[1][0] == calls[0][0] == "L0"  # the same records again
    assert await final_committed(kafka_bootstrap, group, parts, txn_id) == {parts[0]: 3}
    # The aborted attempt's echoes are invisible; the retry's are there exactly once.
    assert sorted(load_ids(await read_committed(kafka_bootstrap, market, until=3))) == [
        "L0",
        "L1",
        "L2",
    ]

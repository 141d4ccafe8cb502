"""Poison records go to dlq, with their bytes and where they came from, in the same
transaction as the batch's outputs; the consumer goes on with the next record."""

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from services.common.envelope import encode, make
from services.common.kafka import (
    make_consumer,
    make_producer,
    static_partitions,
    transactional_id_for,
)
from services.common.kafka_transactions import run_transactional
from services.common.metrics import kafka_metrics
from services.common.topics import create_topics

from .kafka_helpers import LANE_KEY, final_committed, load_ids, read_committed, rested
from .test_kafka_transactions import echo_to

pytestmark = pytest.mark.integration

BAD_BYTES = b"\xff\xfe not json at all"
INVALID = encode(make("load.rested", {"load_id": 42}, LANE_KEY, "test", 1, id="bad-envelope"))


async def test_poison_records_land_in_dlq_and_the_next_record_is_processed(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    orders, market, dlq = (topic_prefix + t for t in ("orders", "market", "dlq"))
    group = topic_prefix + "matching"
    parts = static_partitions(orders, [0])

    plain = make_producer(kafka_bootstrap)
    await plain.start()
    try:
        for value in (encode(rested("L0")), BAD_BYTES, INVALID, encode(rested("L1"))):
            await plain.send(orders, value, key=LANE_KEY.encode())
        await plain.flush()
    finally:
        await plain.stop()

    registry = CollectorRegistry()
    metrics = kafka_metrics("test", registry)
    txn_id = transactional_id_for("test", orders, [0])
    stop = asyncio.Event()
    echo = echo_to(market)

    def transform(batch):
        if any(m["data"]["load_id"] == "L1" for m in batch.messages):
            stop.set()  # the loop stops after committing this batch
        return echo(batch)

    await asyncio.wait_for(
        run_transactional(
            make_consumer(kafka_bootstrap, group_id=group, partitions=parts),
            lambda: make_producer(kafka_bootstrap, transactional_id=txn_id),
            transform,
            group_id=group,
            dlq_topic=dlq,
            source="test",
            stop=stop,
            metrics=metrics,
        ),
        timeout=30,
    )
    # Past the poison: offsets of dead letters commit with the batch.
    assert await final_committed(kafka_bootstrap, group, parts, txn_id) == {parts[0]: 4}

    assert load_ids(await read_committed(kafka_bootstrap, market, until=2)) == ["L0", "L1"]
    letters = await read_committed(kafka_bootstrap, dlq, until=2)
    assert [r.value for r in letters] == [BAD_BYTES, INVALID]
    first, second = (dict(r.headers) for r in letters)
    assert first["dlq.topic"] == orders.encode() and second["dlq.topic"] == orders.encode()
    assert (first["dlq.partition"], first["dlq.offset"]) == (b"0", b"1")
    assert (second["dlq.partition"], second["dlq.offset"]) == (b"0", b"2")
    assert first["dlq.reason"] == b"undecodable" and second["dlq.reason"] == b"invalid"
    assert b"not JSON" in first["dlq.error"]
    assert b"data.load_id must be string" in second["dlq.error"]
    assert first["dlq.group"] == group.encode()
    assert all(r.key == LANE_KEY.encode() for r in letters)

    def sample(name, **labels):
        return registry.get_sample_value(name, labels)

    assert sample("wlex_test_kafka_consumed_messages_total", topic=orders) == 4
    assert sample("wlex_test_kafka_dead_letters_total", topic=orders, reason="undecodable") == 1
    assert sample("wlex_test_kafka_dead_letters_total", topic=orders, reason="invalid") == 1
    assert sample("wlex_test_kafka_produced_messages_total", topic=market) == 2
    assert sample("wlex_test_kafka_produced_messages_total", topic=dlq) == 2
    assert sample("wlex_test_kafka_transactions_total", outcome="committed") >= 1
    assert sample("wlex_test_kafka_batch_seconds_count") >= 1


async def test_without_transactions_dead_letters_are_sent_before_offsets_commit(
    kafka_bootstrap, topic_prefix
):
    from services.common.kafka import commit_consumed, fetch_batch

    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    orders, dlq = topic_prefix + "orders", topic_prefix + "dlq"
    group = topic_prefix + "settlement"
    producer = make_producer(kafka_bootstrap)
    consumer = make_consumer(kafka_bootstrap, group_id=group, topics=[orders])
    await producer.start()
    await consumer.start()
    try:
        for value in (BAD_BYTES, encode(rested("L0"))):
            await producer.send(orders, value)
        await producer.flush()
        seen = []
        while len(seen) < 2:
            batch = await fetch_batch(consumer, timeout_ms=1000)
            seen += batch.messages + batch.dead
            await commit_consumed(
                consumer, producer, batch, group_id=group, dlq_topic=dlq, source="test"
            )
        committed = await consumer.committed(next(iter(consumer.assignment())))
    finally:
        await consumer.stop()
        await producer.stop()
    assert committed == 2
    (letter,) = await read_committed(kafka_bootstrap, dlq, until=1)
    assert letter.value == BAD_BYTES and dict(letter.headers)["dlq.offset"] == b"0"

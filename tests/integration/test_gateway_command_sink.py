"""The gateway's CommandSink against the real broker: concurrent commands go out in
groups, each acknowledged once, in the order of send() per key, on the partition the
producer's default partitioner gives the key; one not acknowledged in time is a 503."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import DefaultPartitioner

from services.common.kafka import make_producer
from services.common.topics import create_topics
from services.gateway import problems
from services.gateway.deps import CommandSink
from tests.integration.kafka_helpers import read_committed


async def test_concurrent_commands_land_once_in_send_order_per_key(kafka_bootstrap, topic_prefix):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=4)
    topic = topic_prefix + "commands"
    producer = make_producer(kafka_bootstrap, client_id="sink-test")
    await producer.start()
    try:
        sink = CommandSink(producer, topic, timeout_s=10.0, group_max=16)
        keys = [f"4201{i:02d}>420600>van-9.6" for i in range(7)]
        sent = [(keys[i % len(keys)], f"{i:04d}".encode()) for i in range(300)]
        # All at once: they queue while the first group is in flight, and the groups
        # that follow hold up to 16 each.
        await asyncio.gather(*(sink.send(value, key) for key, value in sent))
        records = await read_committed(kafka_bootstrap, topic, until=len(sent))
    finally:
        await producer.stop()
    assert sorted(r.value for r in records) == sorted(v for _, v in sent)  # each once
    partitions = sorted(await _partitions(kafka_bootstrap, topic))
    for key in keys:
        mine = [r for r in records if r.key == key.encode()]
        assert [r.value for r in mine] == [v for k, v in sent if k == key]
        expected = DefaultPartitioner()(key.encode(), partitions, None)
        assert {r.partition for r in mine} == {expected}


async def test_a_command_not_acknowledged_in_time_is_503_and_the_sink_goes_on(
    kafka_bootstrap, topic_prefix
):
    await create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    topic = topic_prefix + "commands"
    producer = make_producer(kafka_bootstrap, client_id="sink-test")
    await producer.start()
    try:
        # No broker answers within a microsecond: the group is given up at its deadline.
        sink = CommandSink(producer, topic, timeout_s=0.000_001)
        with pytest.raises(problems.ProblemError) as refused:
            await sink.send(b"late", "a>b>van-9.6")
        assert refused.value.status == 503 and refused.value.reason == problems.UNAVAILABLE
        assert refused.value.headers == {"Retry-After": "1"}
        sink.timeout_s = 10.0
        await sink.send(b"on time", "a>b>van-9.6")
        values = [r.value for r in await read_committed(kafka_bootstrap, topic, until=1)]
    finally:
        await producer.stop()
    # The late one may still land (a send cannot be taken back); the next one does.
    assert values[-1] == b"on time" and set(values) <= {b"late", b"on time"}


async def _partitions(bootstrap: str, topic: str) -> set[int]:
    producer = make_producer(bootstrap, client_id="sink-test-meta")
    await producer.start()
    try:
        return await producer.partitions_for(topic)
    finally:
        await producer.stop()

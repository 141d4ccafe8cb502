"""Helpers of the matching service tests: write a command log to `orders`, read a topic
per partition as a read_committed consumer does, and compute what a clean Engine run per
partition gives."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from services.common import schemas
from services.common.envelope import DecodeError, decode, encode
from services.common.kafka import make_producer
from services.matching.engine import Engine


async def write_log(bootstrap: str, topic: str, commands: list, chunk: int = 5000) -> None:
    """Writes commands (envelopes, or raw bytes with a key) keyed by lane, as the funding
    gate does: the producer's key hashing picks the partition."""
    producer = make_producer(bootstrap, client_id="test-writer")
    await producer.start()
    try:
        for i in range(0, len(commands), chunk):
            futures = []
            for c in commands[i : i + chunk]:
                if isinstance(c, tuple):
                    key, value = c
                else:
                    key, value = c["key"], encode(c)
                futures.append(
                    await producer.send(topic, value, key=key.encode() if key else b"none")
                )
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_partitions(
    bootstrap: str, topic: str, *, timeout_s: float = 30.0, until: int | None = None
) -> dict[int, list[bytes]]:
    """Every value of every partition of topic that a read_committed reader sees, up to the
    end offsets taken at the start (or until `until` values were read, if given)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: dict[int, list[bytes]] = {}
    try:
        parts = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if parts:
                break
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out = {tp.partition: [] for tp in tps}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if until is None:
            end = await consumer.end_offsets(tps)
            while loop.time() < deadline and [
                tp for tp in tps if await consumer.position(tp) < end[tp]
            ]:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    out[tp.partition].extend(r.value for r in records)
        else:
            while loop.time() < deadline and sum(map(len, out.values())) < until:
                for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                    out[tp.partition].extend(r.value for r in records)
            for tp, records in (await consumer.getmany(timeout_ms=300)).items():
                out[tp.partition].extend(r.value for r in records)
    finally:
        await consumer.stop()
    return out


def clean_run(orders: dict[int, list[bytes]]) -> dict[int, list[bytes]]:
    """What a clean, single Engine gives per partition over the same input log: envelopes
    that cannot be decoded or fail the envelope schema are dead letters, not commands."""
    expected = {}
    for p, values in orders.items():
        commands = []
        for v in values:
            try:
                envelope = decode(v)
                schemas.validate_envelope(envelope)
            except (DecodeError, schemas.ValidationError):
                continue
            commands.append(envelope)
        expected[p] = [encode(e) for e in Engine().process(commands)]
    return expected


def first_difference(got: dict[int, list[bytes]], want: dict[int, list[bytes]]) -> str:
    for p in sorted(set(got) | set(want)):
        g, w = got.get(p, []), want.get(p, [])
        if g != w:
            for i, (a, b) in enumerate(zip(g, w, strict=False)):
                if a != b:
                    return f"partition {p} index {i}: got {a[:160]!r} want {b[:160]!r}"
            return f"partition {p}: got {len(g)} events, want {len(w)}"
    return "equal"

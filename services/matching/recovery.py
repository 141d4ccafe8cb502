"""Snapshots on `matching.snapshots` and the silent replay that follows them at start.

A snapshot record is one partition's engine state with the input offset it covers:

    key      b"<partition of orders>"      one key per partition: compaction keeps the
                                           newest, and a partition's snapshot stays
                                           valid whichever instance owns it next
    value    zlib(Engine.snapshot())       level 1: ~5x smaller for ~2% of the time of
                                           writing the snapshot (measured, 1M orders)
    headers  next_offset    the first offset of `orders` NOT in the state
             encoding       "zlib"
             written_ms     wall clock, for the snapshot age metric only

It is written in the same Kafka transaction as the batch whose end it describes, so the
snapshot and the committed input offsets can never disagree: a snapshot is visible to a
read_committed reader only if the batch's outputs and offsets are committed too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from services.common.kafka import decode_valid
from services.matching.engines import MatchingEngine

log = logging.getLogger(__name__)

ENCODING = b"zlib"
ZLIB_LEVEL = 1


@dataclass(slots=True)
class Snapshot:
    partition: int
    next_offset: int
    state: bytes  # Engine.snapshot() bytes, uncompressed
    written_ms: int = 0


def snapshot_record(partition: int, engine: MatchingEngine, next_offset: int, written_ms: int):
    """(key, compressed value, headers) of engine's snapshot at next_offset."""
    value = zlib.compress(engine.snapshot(), ZLIB_LEVEL)
    headers = [
        ("next_offset", str(next_offset).encode()),
        ("encoding", ENCODING),
        ("written_ms", str(written_ms).encode()),
    ]
    return str(partition).encode(), value, headers


def parse_snapshot(key: bytes, value: bytes, headers) -> Snapshot:
    h = dict(headers or ())
    if h.get("encoding") != ENCODING:
        raise ValueError(f"snapshot of partition {key!r}: unknown encoding {h.get('encoding')!r}")
    return Snapshot(
        partition=int(key),
        next_offset=int(h["next_offset"]),
        state=zlib.decompress(value),
        written_ms=int(h.get("written_ms", b"0")),
    )


def _consumer(bootstrap: str, client_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=None,  # a reader, not a member: it commits nothing
        isolation_level="read_committed",  # never a snapshot of an aborted batch
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 * 1024 * 1024,  # above the topic's 16 MiB records
        fetch_max_bytes=64 * 1024 * 1024,
    )


async def latest_snapshots(
    bootstrap: str, topic: str, partitions: list[int], *, timeout_s: float
) -> dict[int, Snapshot]:
    """The newest committed snapshot of each of `partitions`, read from the compacted
    topic's start to its end (one partition topic)."""
    wanted = {str(p).encode() for p in partitions}
    newest: dict[bytes, Any] = {}
    consumer = _consumer(bootstrap, "matching-snapshots")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await _partitions_of(consumer, topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)  # read_committed: the last stable offset
        async with asyncio.timeout(timeout_s):
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        if r.key in wanted and r.value is not None:
                            newest[r.key] = r
    finally:
        await consumer.stop()
    return {int(k): parse_snapshot(r.key, r.value, r.headers) for k, r in newest.items()}


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"topic {topic} has no partitions (does it exist?)")


async def replay(
    bootstrap: str,
    topic: str,
    plan: dict[int, tuple[MatchingEngine, int, int]],
    *,
    validate: Callable[[Any], None],
    timeout_s: float,
    batch_records_max: int = 5000,
) -> int:
    """Silent replay: for each partition p with plan[p] = (engine, start, stop), feed the
    records of [start, stop) to engine and drop its outputs: they were produced (and
    committed) by the run that first processed those records. Records that fail
    decoding or `validate` are skipped, as the first run dead-lettered them instead of
    feeding them to the engine. Returns the number of commands replayed."""
    todo = {p: v for p, v in plan.items() if v[1] < v[2]}
    if not todo:
        return 0
    consumer = _consumer(bootstrap, "matching-replay")
    await consumer.start()
    replayed = 0
    try:
        tps = {p: TopicPartition(topic, p) for p in todo}
        consumer.assign(list(tps.values()))
        for p, (_, start, _) in todo.items():
            consumer.seek(tps[p], start)
        remaining = set(todo)
        started = time.perf_counter()
        async with asyncio.timeout(timeout_s):
            while remaining:
                fetched = await consumer.getmany(timeout_ms=200, max_records=batch_records_max)
                for tp, records in fetched.items():
                    engine, _, stop = todo[tp.partition]
                    records = [r for r in records if r.offset < stop]
                    if records:
                        dead: list = []

                        def fallback(value, i, records=records, dead=dead):
                            return decode_valid(records[i], validate, dead)

                        # Straight from the bytes, as the service's transform; encoded
                        # outputs dropped. Dead letters are skipped, not sent again.
                        engine.process_raw([r.value for r in records], fallback)
                        replayed += len(records) - len(dead)
                for p in list(remaining):
                    if await consumer.position(tps[p]) >= todo[p][2]:
                        remaining.discard(p)
                        consumer.pause(tps[p])
        log.info(
            "replayed %d commands on %d partitions in %.2fs",
            replayed,
            len(todo),
            time.perf_counter() - started,
        )
    finally:
        await consumer.stop()
    return replayed

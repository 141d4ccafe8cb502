"""The one Kafka adapter of wlex: clients with safe settings, batches in and out, dead
letters.

Every service goes through here, so the settings our guarantees rest on are written
once, below, with their reasons. Consume-transform-produce in Kafka transactions is in
services.common.kafka_transactions; without transactions:

    consumer = make_consumer(bootstrap, group_id=..., topics=[...])
    batch = await fetch_batch(consumer)
    ... make the batch's work durable (an inbox table makes it idempotent) ...
    await commit_consumed(consumer, producer, batch, group_id=..., dlq_topic=..., source=...)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.common import schemas
from services.common.deadletter import (
    INVALID,
    UNDECODABLE,
    DeadLetter,
    dead_letter_headers,
    dead_letter_key,
)
from services.common.envelope import DecodeError, decode, encode
from services.common.metrics import KafkaMetrics

log = logging.getLogger(__name__)

Output = tuple[str, str | None, dict[str, Any]]  # (full topic name, key, envelope)

BATCH_RECORDS_MAX = 2000


# ---------------------------------------------------------------------------- clients


def make_producer(
    bootstrap: str,
    *,
    transactional_id: str | None = None,
    client_id: str = "wlex",
    linger_ms: int = 5,
    max_batch_size: int = 256 * 1024,
    max_request_size: int = 1024 * 1024,
    transaction_timeout_ms: int = 60_000,
    retry_backoff_ms: int = 100,
) -> AIOKafkaProducer:
    """An unstarted producer; transactional when transactional_id is given.

    max_request_size bounds one record too: raise it (with the topic's
    max.message.bytes) for matching snapshots. retry_backoff_ms is the wait before a
    retried request (a refused produce, a coordinator's CONCURRENT_TRANSACTIONS); the
    matching service lowers it (docs/matching-service.md "Latency").
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",  # a record is acknowledged only once every in-sync replica has it
        enable_idempotence=True,  # the broker drops our retried duplicates, keeps order
        transactional_id=transactional_id,  # fences a restarted twin; atomic batches
        transaction_timeout_ms=transaction_timeout_ms,  # a hung batch is aborted by the broker
        # A few ms of lingering turns a batch of sends into a few requests; 16 KiB
        # (the default) would split a 2000-event batch into dozens of requests.
        linger_ms=linger_ms,
        max_batch_size=max_batch_size,
        max_request_size=max(max_request_size, max_batch_size),
        retry_backoff_ms=retry_backoff_ms,
    )


def make_consumer(
    bootstrap: str,
    *,
    group_id: str,
    topics: Iterable[str] = (),
    partitions: Iterable[TopicPartition] = (),
    client_id: str = "wlex",
    max_partition_fetch_bytes: int = 4 * 1024 * 1024,
    listener: ConsumerRebalanceListener | None = None,
    fetch_max_wait_ms: int = 100,
) -> AIOKafkaConsumer:
    """An unstarted consumer of `topics` (group-managed) or of `partitions` (static
    assignment: no rebalances, offsets still kept under group_id). Give one of the two.

    Group-managed consumers rebalance in a background task, so a commit can meet
    CommitFailedError (aiokafka #929): give a listener that finishes or drops the
    batch in hand on on_partitions_revoked.
    """
    topics, partitions = list(topics), list(partitions)
    if bool(topics) == bool(partitions):
        raise ValueError("give topics (group-managed) or partitions (static), not both")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=group_id,
        isolation_level="read_committed",  # never see an aborted or open transaction
        enable_auto_commit=False,  # offsets move only with the work they paid for
        # A group with no committed offset reads the log from its start: "latest"
        # would silently skip everything written before the group first ran.
        auto_offset_reset="earliest",
        fetch_min_bytes=1,  # answer as soon as anything arrives: latency over batching
        # A long-poll in flight holds up a seek (a rewind) or a new assignment until it
        # returns: 100 ms bounds that, for ten idle requests a second per broker.
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=max_partition_fetch_bytes,  # above any one record
    )
    if partitions:
        consumer.assign(partitions)  # before start(): start() fetches their committed offsets
    else:
        consumer.subscribe(topics, listener=listener)
    return consumer


def static_partitions(topic: str, partitions: Iterable[int]) -> list[TopicPartition]:
    """The TopicPartitions of a fixed set, sorted."""
    return [TopicPartition(topic, p) for p in sorted(set(partitions))]


def transactional_id_for(service: str, topic: str, partitions: Iterable[int]) -> str:
    """The transactional id of a static partition set, e.g. "matching@wlex.orders#0-3,7".

    aiokafka commits offsets in transactions without the group's generation (no
    KIP-447), so the group cannot fence a zombie; the transactional id does. It must
    therefore name exactly the set of input partitions: the instance that takes the
    same set over fences the old one, and two instances never share a partition.
    """
    ps = sorted(set(partitions))
    if not ps:
        raise ValueError("empty partition set")
    ranges = []
    start = prev = ps[0]
    for p in ps[1:]:
        if p != prev + 1:
            ranges.append(f"{start}-{prev}" if start != prev else str(start))
            start = p
        prev = p
    ranges.append(f"{start}-{prev}" if start != prev else str(start))
    return f"{service}@{topic}#{','.join(ranges)}"


def transactional_ids_for(
    service: str, topic: str, partitions: Iterable[int], count: int
) -> list[str]:
    """count transactional ids of one static partition set, for producers taken in turn
    (services.matching.pipeline): transactional_id_for's, then the same with "+1",
    "+2"... The first is the id of a single producer, so one producer is the special
    case of one id."""
    first = transactional_id_for(service, topic, partitions)
    return [first] + [f"{first}+{k}" for k in range(1, count)]


# ---------------------------------------------------------------------------- batches


@dataclass(slots=True)
class Batch:
    """Records from one getmany, decoded.

    messages[i] is the envelope of records[i]: valid, in partition order (order across
    partitions is not defined). Records that failed to decode or validate are in dead,
    not in messages. offsets are the next offsets to consume per partition, for every
    record, dead ones included: what a commit of this batch stores.
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    records: list[ConsumerRecord] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    fetched_at_s: float = 0.0  # perf_counter, for the batch histogram only

    def __len__(self) -> int:
        return len(self.records) + len(self.dead)


def decode_batch(
    fetched: dict[TopicPartition, list[ConsumerRecord]],
    validate: Callable[[Any], None] = schemas.validate,
) -> Batch:
    """Decodes and validates the records of a getmany result (pure, no I/O)."""
    batch = Batch(fetched_at_s=time.perf_counter())
    for tp, records in fetched.items():
        if not records:
            continue
        batch.first_offsets[tp] = records[0].offset
        batch.offsets[tp] = records[-1].offset + 1
        for record in records:
            envelope = decode_valid(record, validate, batch.dead)
            if envelope is not None:
                batch.messages.append(envelope)
                batch.records.append(record)
    return batch


def decode_valid(
    record: ConsumerRecord, validate: Callable[[Any], None], dead: list[DeadLetter]
) -> dict[str, Any] | None:
    """The envelope of one record, decoded and validated; None when it fails, with its
    DeadLetter (reason UNDECODABLE or INVALID) appended to `dead`. decode_batch's step,
    for consumers that decode records themselves (the matching engine's raw path)."""
    try:
        envelope = decode(record.value)
    except DecodeError as exc:
        dead.append(DeadLetter(record, UNDECODABLE, str(exc)))
        return None
    try:
        validate(envelope)
    except schemas.ValidationError as exc:
        dead.append(DeadLetter(record, INVALID, str(exc)))
        return None
    return envelope


async def fetch_batch(
    consumer: AIOKafkaConsumer,
    *,
    max_records: int = BATCH_RECORDS_MAX,
    timeout_ms: int = 100,
    validate: Callable[[Any], None] = schemas.validate,
    metrics: KafkaMetrics | None = None,
) -> Batch:
    """At most max_records records (waiting up to timeout_ms for the first), decoded.
    An empty Batch when nothing came."""
    fetched = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    batch = decode_batch(fetched, validate)
    if metrics is not None and len(batch):
        for tp, records in fetched.items():
            metrics.consumed.labels(tp.topic).inc(len(records))
        metrics.batch_records.observe(len(batch))
    return batch


# ---------------------------------------------------------------------------- producing


async def send_all(producer: AIOKafkaProducer, outputs: Iterable[Output]) -> list[asyncio.Future]:
    """Queues every output and returns their delivery futures without waiting for them.

    One await per send() (it only waits for metadata and buffer room), and one gather
    by the caller: waiting for each delivery costs a round trip per message (#1065),
    and thousands of concurrent send() calls wake each other quadratically (#528).
    """
    futures = []
    for topic, key, envelope in outputs:
        key_bytes = key.encode() if key is not None else None
        futures.append(await producer.send(topic, encode(envelope), key=key_bytes))
    return futures


async def produce_batch(
    producer: AIOKafkaProducer, outputs: Iterable[Output], metrics: KafkaMetrics | None = None
) -> list:
    """Sends outputs and waits once for all of them; returns their RecordMetadata.
    On a non-transactional producer only (a transactional one needs a transaction)."""
    outputs = list(outputs)
    results = await asyncio.gather(*await send_all(producer, outputs))
    count_produced(metrics, outputs)
    return results


async def send_dead_letters(
    producer: AIOKafkaProducer,
    dead: Iterable[DeadLetter],
    dlq_topic: str,
    *,
    group_id: str | None,
    source: str,
) -> list[asyncio.Future]:
    """Queues each dead letter to dlq_topic (original bytes, dlq.* headers)."""
    futures = []
    for letter in dead:
        futures.append(
            await producer.send(
                dlq_topic,
                letter.record.value,
                key=dead_letter_key(letter.record),
                headers=dead_letter_headers(letter, group_id, source),
            )
        )
    return futures


async def commit_consumed(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    batch: Batch,
    *,
    group_id: str,
    dlq_topic: str,
    source: str,
    metrics: KafkaMetrics | None = None,
) -> None:
    """For consumers without Kafka transactions (an inbox table makes them idempotent):
    once the batch's work is durable, dead-letter its poison records, wait for the
    broker to take them, then commit the batch's offsets. A crash in between
    dead-letters them again on restart: dlq is at-least-once here.
    """
    futures = await send_dead_letters(
        producer, batch.dead, dlq_topic, group_id=group_id, source=source
    )
    await asyncio.gather(*futures)
    count_dead(metrics, batch.dead, dlq_topic)
    if batch.offsets:
        await consumer.commit(batch.offsets)


def count_produced(metrics: KafkaMetrics | None, outputs: list[Output]) -> None:
    if metrics is None:
        return
    for topic, _, _ in outputs:
        metrics.produced.labels(topic).inc()


def count_dead(metrics: KafkaMetrics | None, dead: list[DeadLetter], dlq_topic: str) -> None:
    if metrics is None:
        return
    for letter in dead:
        metrics.dead_lettered.labels(letter.record.topic, letter.reason).inc()
        metrics.produced.labels(dlq_topic).inc()


# ----------------------------------------------------------------------------- stopping

STOP_TIMEOUT_S = 5.0


async def stop_client(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """client.stop(), bounded: with the broker gone a producer's stop() waits for a
    flush that never comes, and the process would outlive its shutdown timeout."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await client.stop()
    except TimeoutError:
        log.warning("%s did not stop within %.0fs", type(client).__name__, STOP_TIMEOUT_S)

"""Consume-transform-produce in Kafka transactions: each batch's outputs, dead letters
and input offsets commit together or not at all (DESIGN "Exactly-once effect").

    consumer = make_consumer(bootstrap, group_id=group, partitions=static_partitions(...))
    await run_transactional(  # starts and stops both clients
        consumer,
        lambda: make_producer(bootstrap, transactional_id=transactional_id_for(...)),
        transform,  # Batch -> [(topic, key, envelope)]
        group_id=group, dlq_topic=settings.topic("dlq"), source="matching",
    )
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.structs import TopicPartition

from services.common import schemas
from services.common.kafka import (
    BATCH_RECORDS_MAX,
    Batch,
    Output,
    count_dead,
    count_produced,
    fetch_batch,
    send_all,
    send_dead_letters,
)
from services.common.metrics import KafkaMetrics

Transform = Callable[[Batch], "list[Output] | Awaitable[list[Output]]"]


def set_add_partitions_backoff(seconds: float) -> None:
    """Sets how long aiokafka waits before it retries an AddPartitionsToTxn that the
    coordinator answered CONCURRENT_TRANSACTIONS (for every producer of the process).

    Kafka's coordinator refuses a new transaction's AddPartitionsToTxn until the
    previous transaction's markers are written, which takes a few ms after EndTxn has
    answered; a producer that begins its next transaction at once meets this every
    time. aiokafka then waits a module constant, BACKOFF_OVERRIDE (20 ms, KAFKA-5477),
    not retry_backoff_ms: on a transaction of ~10 ms that doubles it.
    """
    from aiokafka.producer import sender

    if not hasattr(sender, "BACKOFF_OVERRIDE"):  # a newer aiokafka: look again
        raise RuntimeError("aiokafka.producer.sender.BACKOFF_OVERRIDE is gone")
    sender.BACKOFF_OVERRIDE = seconds


class _EarlyGroupTransactionManager(TransactionManager):
    """aiokafka's TransactionManager, plus a consumer group that joins the open
    transaction before its offsets are known (AddOffsetsToTxn names only the group;
    aiokafka sends it only once send_offsets_to_transaction() has the offsets)."""

    early_group: str | None = None

    def begin_transaction(self):
        self.early_group = None
        super().begin_transaction()

    def consumer_group_to_add(self):
        group = super().consumer_group_to_add()
        if group is None and self._txn_consumer_group is None and self.is_in_transaction():
            return self.early_group
        return group


async def begin_early(
    producer: AIOKafkaProducer, partitions: Iterable[TopicPartition], group_id: str
) -> None:
    """Opens producer's next transaction now, unless one is open, and adds partitions
    and group_id to it: the AddPartitionsToTxn and AddOffsetsToTxn round trips then run
    while the batch is still being gathered, instead of before its first record and
    its offsets can go out. Call it again as more partitions become known; a partition
    that is never written gets an empty commit marker, so add only likely ones.

    The transaction must be committed soon (commit_in_transaction takes it over): the
    coordinator aborts one left open for transaction_timeout_ms, which fences the
    producer. Records and offset commits are not sent here, so batch order (Prior)
    is untouched: registering with the coordinator writes nothing to the partitions.
    """
    txn = producer._txn_manager
    if type(txn) is TransactionManager:
        txn.__class__ = _EarlyGroupTransactionManager
    if txn.state is TransactionState.READY:
        await producer.begin_transaction()
    elif txn.state is not TransactionState.IN_TRANSACTION:
        return  # committing, aborting or failed: commit_in_transaction sees to it
    for tp in partitions:
        txn.maybe_add_partition_to_txn(tp)
    if txn.early_group is None:
        txn.early_group = group_id
        txn.notify_task_waiter()


class TransactionAborted(Exception):
    """A batch's transaction was aborted and the consumer put back to the batch's
    start: the next fetch returns the same records again."""


class PriorAborted(Exception):
    """The transaction before this one failed, so this one must not commit."""


@dataclass(slots=True)
class Prior:
    """A transaction still in flight that the next one must follow: its records and
    offsets before the next one's (`sent`), its commit before the next one's (`task`).

    Two transactions of different transactional ids may overlap, but the output
    partitions must get their records in batch order, and the group's offsets must
    be committed in batch order: the group coordinator keeps, of two committed
    transactional offset commits, the one written later to __consumer_offsets.
    """

    task: asyncio.Task
    sent: asyncio.Event

    async def wait_sent(self) -> None:
        """Returns once the prior transaction's records are acknowledged and its
        offsets added; raises PriorAborted if it failed first."""
        if not self.sent.is_set():
            waiter = asyncio.ensure_future(self.sent.wait())
            try:
                await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        if not self.sent.is_set():
            await self.wait_committed()  # it finished without sending: raises

    async def wait_committed(self) -> None:
        """Returns once the prior transaction has committed; raises PriorAborted if it
        did not."""
        try:
            await asyncio.shield(self.task)
        except BaseException as exc:
            raise PriorAborted(repr(exc)) from exc


def rewind(consumer: AIOKafkaConsumer, batch: Batch) -> None:
    """Puts the consumer back on the first record of batch in each of its partitions.

    Needed after a failed batch: getmany has already moved past it (aiokafka #1046).
    Not consumer.committed(): aiokafka's OffsetFetch (v3) cannot ask for stable
    offsets (KIP-447's require_stable), so just after a commit it may still return
    the offsets from before it, and seeking there would redo a committed batch.
    Not seek_to_committed() either: it seeks only when the offset is above 0.
    Where this batch started is where the last commit ended.
    """
    for tp, first in batch.first_offsets.items():
        consumer.seek(tp, first)


async def commit_in_transaction(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    batch: Batch,
    send_outputs: Callable[[], Awaitable[list[asyncio.Future]]],
    *,
    group_id: str,
    dlq_topic: str,
    source: str,
    after: Prior | None = None,
    sent: asyncio.Event | None = None,
) -> float:
    """ONE transaction: what send_outputs() sends (it returns the send futures), the
    batch's dead letters and the batch's offsets for group_id. Returns the seconds the
    commit call took.

    after: the transaction of the batch before this one, when it may still be in flight
    (on another transactional id). This one then sends nothing until that one is
    `sent`, and commits only once that one has committed; if it fails, this one aborts.
    sent is set once this transaction's records are acknowledged and its offsets
    added: the point from which the next batch's transaction may send. A transaction
    that begin_early opened on producer is taken over.

    On failure the transaction is aborted, the consumer rewound to the batch's start and
    TransactionAborted raised; the producer should then be replaced (see
    run_transactional). ProducerFenced (a twin took our transactional id) and a failed
    abort are raised as they are: the producer is unusable and the process should stop.
    """
    try:
        state = producer._txn_manager.state
        if state is TransactionState.ABORTABLE_ERROR:
            # What begin_early opened failed (the coordinator refused a partition or
            # the group): abort it, below.
            raise KafkaError("the transaction begun early failed")
        if state is not TransactionState.IN_TRANSACTION:
            await producer.begin_transaction()
        if after is not None:
            await after.wait_sent()
        futures = await send_outputs()
        futures += await send_dead_letters(
            producer, batch.dead, dlq_topic, group_id=group_id, source=source
        )
        await producer.send_offsets_to_transaction(batch.offsets, group_id)
        # aiokafka does not fail the transaction when the broker refuses a record: it
        # fails that record's future (and, by its sequence number, every later one to
        # the same partition), and commit_transaction() would still commit the rest,
        # a torn batch. So every future is checked before the commit.
        results = await asyncio.gather(*futures, return_exceptions=True)
        refused = next((r for r in results if isinstance(r, BaseException)), None)
        if refused is not None:
            raise refused
        if sent is not None:
            sent.set()
        if after is not None:
            await after.wait_committed()
        committing = time.perf_counter()
        await producer.commit_transaction()
        return time.perf_counter() - committing
    except ProducerFenced:
        raise
    except Exception as exc:
        try:
            await producer.abort_transaction()
        except Exception as abort_exc:
            # Say the commit's outcome is unknown: the transaction is now the broker's
            # to settle, and our next producer with this transactional id aborts or
            # completes it at init. This producer is done.
            raise RuntimeError(f"abort failed after {exc!r}") from abort_exc
        rewind(consumer, batch)
        raise TransactionAborted(f"batch of {len(batch)} records: {exc!r}") from exc


async def commit_batch(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    batch: Batch,
    transform: Transform,
    *,
    group_id: str,
    dlq_topic: str,
    source: str,
    metrics: KafkaMetrics | None = None,
) -> None:
    """transform(batch), then ONE transaction: its outputs, the batch's dead letters and
    the batch's offsets for group_id. All of it is visible to read_committed consumers,
    or none of it.

    On failure the transaction is aborted, the consumer rewound to the batch's start
    and TransactionAborted raised; the producer should then be replaced (see
    run_transactional). If transform itself raises, the consumer is rewound and its
    exception raised. ProducerFenced (a twin took our transactional id) and a failed
    abort are raised as they are: the producer is unusable and the process should stop.
    """
    try:
        outputs = transform(batch)
        if inspect.isawaitable(outputs):
            outputs = await outputs
        outputs = list(outputs)
    except Exception:
        rewind(consumer, batch)
        raise
    try:
        await commit_in_transaction(
            consumer,
            producer,
            batch,
            lambda: send_all(producer, outputs),
            group_id=group_id,
            dlq_topic=dlq_topic,
            source=source,
        )
    except TransactionAborted:
        if metrics is not None:
            metrics.transactions.labels("aborted").inc()
        raise
    if metrics is not None:
        metrics.transactions.labels("committed").inc()
        count_produced(metrics, outputs)
        count_dead(metrics, batch.dead, dlq_topic)
        metrics.batch_seconds.observe(time.perf_counter() - batch.fetched_at_s)


async def run_transactional(
    consumer: AIOKafkaConsumer,
    new_producer: Callable[[], AIOKafkaProducer],
    transform: Transform,
    *,
    group_id: str,
    dlq_topic: str,
    source: str,
    stop: asyncio.Event | None = None,
    max_records: int = BATCH_RECORDS_MAX,
    poll_timeout_ms: int = 100,
    validate: Callable[[Any], None] = schemas.validate,
    on_start: Callable[[AIOKafkaConsumer], Awaitable[None]] | None = None,
    on_abort: Callable[[AIOKafkaConsumer], Awaitable[None]] | None = None,
    aborts_in_a_row_max: int = 5,
    metrics: KafkaMetrics | None = None,
) -> None:
    """Consume-transform-produce until stop is set: fetch_batch, then commit_batch.

    Starts and stops the producer and the consumer itself, in this order: first the
    producer (new_producer(): make_producer with the partition set's transactional
    id), whose InitProducerId makes the broker finish or abort whatever transaction
    the previous owner of the set left open; only then the unstarted, statically
    assigned consumer (see transactional_id_for), so the committed offsets it reads
    are final. on_start(consumer) runs next, before the first fetch (the matching
    engine seeks to its snapshot's offsets there).

    The producer is replaced after every aborted batch: aiokafka keeps counting the
    sequence numbers of records the broker refused, so the next transaction to that
    partition would fail with OutOfOrderSequenceNumber; a new producer starts a new
    epoch. After an aborted batch the same records come again: a transform with state
    must undo what it did for them in on_abort(consumer). After aborts_in_a_row_max
    aborts in a row the last TransactionAborted is raised.

    validate=schemas.validate_envelope lets the transform see data that fails its
    schema (the engine answers those with order.rejected rather than dead letters).
    Cancelled mid-batch, the open transaction is aborted by the next producer with the
    same transactional id, or by the broker after transaction_timeout_ms.
    """
    producer = new_producer()
    await producer.start()
    try:
        await consumer.start()
        try:
            if on_start is not None:
                await on_start(consumer)
            aborts = 0
            while stop is None or not stop.is_set():
                batch = await fetch_batch(
                    consumer,
                    max_records=max_records,
                    timeout_ms=poll_timeout_ms,
                    validate=validate,
                    metrics=metrics,
                )
                if not len(batch):
                    continue
                try:
                    await commit_batch(
                        consumer,
                        producer,
                        batch,
                        transform,
                        group_id=group_id,
                        dlq_topic=dlq_topic,
                        source=source,
                        metrics=metrics,
                    )
                except TransactionAborted:
                    aborts += 1
                    if aborts >= aborts_in_a_row_max:
                        raise
                    await producer.stop()
                    producer = new_producer()
                    await producer.start()
                    if on_abort is not None:
                        await on_abort(consumer)
                    continue
                aborts = 0
        finally:
            await consumer.stop()
    finally:
        await producer.stop()

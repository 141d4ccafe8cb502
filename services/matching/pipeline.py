"""Consume-transform-produce in Kafka transactions, to explicit output partitions.

services.common.kafka_transactions does the same for (topic, key, envelope) outputs that
the producer partitions by key. The engine needs two things more:
- its outputs for input partition p go to partition p of `market` (same partition
  count), so `market` partition p is exactly Engine.process over `orders` partition p,
  byte for byte, including the outputs without a key (rejections of garbled commands),
  which a key-hashing producer would scatter at random;
- speed: outputs arrive already encoded and grouped by partition and go out through
  producer.create_batch()/send_batch(), one BatchBuilder per partition, instead of one
  awaited send() per record (aiokafka #216, #528). The passthrough benchmark runs the
  same loop, so the pipeline/passthrough ratio measures the engine alone.

The transaction holds the batch's outputs, its extras (engine snapshots), its dead
letters and its input offsets: all visible to read_committed readers, or none.
The traps this loop steps around are recorded in kafka_transactions (rewind after an
abort, a new producer after an abort, every delivery future checked before the commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from services.common.kafka import Batch, decode_batch, stop_client
from services.common.kafka_transactions import (
    Prior,
    TransactionAborted,
    begin_early,
    commit_in_transaction,
    rewind,
)

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes]  # (key, value)
Extra = tuple[str, int, bytes, bytes, list]  # (topic, partition, key, value, headers)


@dataclass(slots=True)
class Outputs:
    """What one batch produces: records per partition of the output topic, and extras."""

    records: dict[int, list[Record]] = field(default_factory=dict)
    extras: list[Extra] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # the transform's, for on_commit

    def absorb(self, later: Outputs) -> None:
        """Appends the outputs of the piece fetched right after this batch's records
        (Pipeline._next_while). A meta value with update() (a Counter adds, a dict
        takes the later entries) is updated, any other is replaced by the later one."""
        for partition, records in later.records.items():
            self.records.setdefault(partition, []).extend(records)
        self.extras.extend(later.extras)
        for key, value in later.meta.items():
            mine = self.meta.get(key)
            if mine is not None and hasattr(mine, "update"):
                mine.update(value)
            else:
                self.meta[key] = value


def extend_batch(batch: Batch, later: Batch) -> None:
    """Appends the piece fetched right after batch: its records, dead letters and end
    offsets; a partition new to batch starts where later starts."""
    batch.messages.extend(later.messages)
    batch.records.extend(later.records)
    batch.dead.extend(later.dead)
    for tp, first in later.first_offsets.items():
        batch.first_offsets.setdefault(tp, first)
    batch.offsets.update(later.offsets)


def raw_batch(fetched) -> Batch:
    """A Batch of undecoded records (the passthrough's, and the matching service's, whose
    transform decodes them): messages stay empty."""
    batch = Batch(fetched_at_s=time.perf_counter())
    for tp, records in fetched.items():
        if records:
            batch.first_offsets[tp] = records[0].offset
            batch.offsets[tp] = records[-1].offset + 1
            batch.records.extend(records)
    return batch


async def send_records(
    producer: AIOKafkaProducer, topic: str, partition: int, records: list[Record]
) -> list[asyncio.Future]:
    """Queues records to one partition in as few BatchBuilders as they fit in."""
    futures = []
    builder = producer.create_batch()
    for key, value in records:
        if builder.append(key=key, value=value, timestamp=None) is None:
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")
    if builder.record_count():
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


@dataclass(slots=True)
class _Flight:
    """A batch whose transaction is in flight."""

    batch: Batch
    prior: Prior  # what the next transaction follows
    slot: int  # whose producer


@dataclass
class Pipeline:
    """One transactional consume-transform-produce loop; see run()."""

    consumer: AIOKafkaConsumer  # statically assigned, unstarted
    # transactional, unstarted; called with a slot 0 <= slot < producers, and each
    # slot's producer must have a transactional id of its own
    new_producer: Callable[[int], AIOKafkaProducer]
    transform: Callable[[Batch], Outputs]
    out_topic: str
    group_id: str
    dlq_topic: str
    source: str
    validate: Callable[[Any], None] | None  # None: pass records through undecoded
    batch_records_max: int = 2000
    poll_timeout_ms: int = 50
    on_start: Callable[[AIOKafkaConsumer], Awaitable[None]] | None = None
    on_commit: Callable[[Batch, Outputs, float], None] | None = None  # (.., commit_s)
    on_abort: Callable[[AIOKafkaConsumer], Awaitable[None]] | None = None
    aborts_in_a_row_max: int = 5
    # While a transaction is in flight, keep fetching and transforming the next batch
    # every this many ms until it is done (0: one fetch); see _next_while.
    gather_poll_ms: int = 0
    # Transactional ids taken in turn, one producer each; see run().
    producers: int = 1
    # At most this many transactions at once (<= producers); see run().
    transactions_in_flight: int = 1
    # Open the next batch's transaction, and add its partitions and the group to it,
    # while the batch is still gathered, once its producer is free; see _next_while.
    early_begin: bool = False
    clients: list[AIOKafkaProducer] = field(default_factory=list)
    # The output partitions of the newest batch sent: likely the next batch's too.
    _recent_partitions: frozenset[int] = field(default=frozenset(), init=False, repr=False)

    async def run(self, stop: asyncio.Event) -> None:
        """Start the producers (InitProducerId fences the previous owner of each
        transactional id and settles its open transaction), then the consumer (whose
        committed offsets are now final), then on_start; loop until stop is set.

        While one batch's transaction is in flight (some five broker round trips:
        AddPartitionsToTxn, Produce, AddOffsetsToTxn, TxnOffsetCommit, EndTxn), the
        next batch is fetched and transformed: the CPU work hides behind the waits.
        The transform's state then runs ahead of what is committed, which on_abort
        must undo (it gets the consumer put back to the first uncommitted record of
        every partition).

        With several producers, batches take them in turn. A producer's next
        transaction then never waits for the markers of its last one (the
        coordinator refuses AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until
        they are written). With transactions_in_flight 2, the next batch's
        transaction starts as soon as this one's records are acknowledged and its
        offsets added, so its first round trips overlap this one's EndTxn; records,
        offsets and commits still go in batch order (kafka_transactions.Prior).
        With early_begin, a producer whose last transaction has finished opens its next
        one while that batch is still gathered, and adds the likely output partitions
        and the group to it (kafka_transactions.begin_early): the batch's sends then
        take one round trip (Produce beside TxnOffsetCommit) instead of three.
        """
        if not 1 <= self.transactions_in_flight <= self.producers:
            raise ValueError("need 1 <= transactions_in_flight <= producers")
        try:
            for slot in range(self.producers):
                self.clients.append(self.new_producer(slot))
                await self.clients[-1].start()
            await self.consumer.start()
            try:
                if self.on_start is not None:
                    await self.on_start(self.consumer)
                await self._loop(stop)
            finally:
                await stop_client(self.consumer)
        finally:
            for client in self.clients:
                await stop_client(client)

    async def _loop(self, stop: asyncio.Event) -> None:
        pending: tuple[Batch, Outputs] | None = None
        flight: list[_Flight] = []  # oldest first
        aborts = 0
        turn = 0
        while True:
            if pending is None:
                # Nothing is in flight here: with nothing gathered, everything landed.
                if stop.is_set():
                    return
                batch = await self.fetch()
                if not len(batch):
                    continue
                pending = (batch, self._transform(batch))
            batch, outputs = pending
            sent = asyncio.Event()
            task = asyncio.create_task(
                self.commit(
                    batch,
                    outputs,
                    self.clients[turn],
                    after=flight[-1].prior if flight else None,
                    sent=sent,
                )
            )
            flight.append(_Flight(batch, Prior(task, sent), turn))
            self._recent_partitions = frozenset(outputs.records)
            turn = (turn + 1) % self.producers
            nxt: Batch | None = None
            nxt_outputs: Outputs | None = None
            try:
                if not stop.is_set():
                    nxt, nxt_outputs = await self._next_while(
                        lambda: self._may_start(flight), self._early(flight, turn)
                    )
            except BaseException:
                await self._cancel(flight)
                raise
            # Before the next transaction starts, at most transactions_in_flight - 1
            # may still run; with nothing gathered, none.
            keep = self.transactions_in_flight - 1 if nxt is not None else 0
            failure = await self._land(flight, keep, nxt)
            if failure is not None:
                aborts = await self._recover(failure, nxt, aborts + 1)
                pending = None
                continue
            aborts = 0
            pending = (nxt, nxt_outputs) if nxt is not None else None

    async def _recover(
        self, failure: tuple[BaseException, list[Batch]], nxt: Batch | None, aborts: int
    ) -> int:
        """After aborted transactions: the consumer back to the first uncommitted record
        of every partition, new producers (a new epoch: aiokafka keeps counting the
        refused records' sequence numbers), on_abort. Returns aborts."""
        exc, failed = failure
        log.warning("batch aborted (%d in a row)", aborts, exc_info=exc)
        # Each failed batch's start (again: a fetch may have run after commit()'s
        # rewind), and for partitions only in a later batch, its start. The earliest
        # batch is rewound last, so its start wins.
        for batch in reversed([*failed, *([nxt] if nxt is not None else [])]):
            rewind(self.consumer, batch)
        if aborts >= self.aborts_in_a_row_max:
            raise exc
        for slot, client in enumerate(self.clients):
            await stop_client(client)
            self.clients[slot] = self.new_producer(slot)
            await self.clients[slot].start()
        if self.on_abort is not None:
            await self.on_abort(self.consumer)
        return aborts

    def _may_start(self, flight: list[_Flight]) -> bool:
        """Whether the next batch's transaction may start: fewer than
        transactions_in_flight unfinished, and the newest one past its sends."""
        newest = flight[-1].prior
        if newest.task.done():
            return True
        running = sum(1 for f in flight if not f.prior.task.done())
        return running < self.transactions_in_flight and newest.sent.is_set()

    def _early(
        self, flight: list[_Flight], slot: int
    ) -> Callable[[Outputs], Awaitable[None]] | None:
        """What _next_while calls with the outputs gathered so far: once the producer of
        slot has no transaction in flight, begin_early its next one with their
        partitions and those of the batch before (at a steady rate a batch writes much
        the same partitions as the one before, and one AddPartitionsToTxn then covers
        them all). None without early_begin."""
        if not self.early_begin:
            return None
        producer = self.clients[slot]

        async def early(outputs: Outputs) -> None:
            if all(f.prior.task.done() for f in flight if f.slot == slot):
                partitions = self._recent_partitions.union(outputs.records)
                await begin_early(
                    producer,
                    [TopicPartition(self.out_topic, p) for p in partitions],
                    self.group_id,
                )

        return early

    async def _land(
        self, flight: list[_Flight], keep: int, nxt: Batch | None
    ) -> tuple[BaseException, list[Batch]] | None:
        """Awaits the oldest transactions in flight (and any already finished) until at
        most `keep` remain. Returns None, or, once every transaction in flight has
        finished (one failure aborts those after it), the first failure and the failed
        batches oldest first. Any error but TransactionAborted is raised, after the
        rest are cancelled and the consumer put back to nxt's start."""
        failure: BaseException | None = None
        failed: list[Batch] = []
        try:
            while flight and (
                failure is not None or len(flight) > keep or flight[0].prior.task.done()
            ):
                f = flight[0]
                try:
                    await f.prior.task
                except TransactionAborted as exc:
                    failure = failure or exc
                    failed.append(f.batch)
                flight.pop(0)
        except BaseException:
            if nxt is not None:
                rewind(self.consumer, nxt)
            await self._cancel(flight)
            raise
        return (failure, failed) if failure is not None else None

    async def _cancel(self, flight: list[_Flight]) -> None:
        for f in flight:
            if not f.prior.task.done():
                f.prior.task.cancel()  # the next producer of the id aborts it
        for f in flight:
            with contextlib.suppress(BaseException):
                await f.prior.task
        flight.clear()

    async def _next_while(
        self,
        may_start: Callable[[], bool],
        early: Callable[[Outputs], Awaitable[None]] | None = None,
    ) -> tuple[Batch | None, Outputs | None]:
        """The next batch, fetched and transformed until may_start() (the next
        transaction may start: the one in flight is done, or far enough along).
        early(outputs so far) runs after each piece: its transaction's first round
        trips then overlap the gathering.

        gather_poll_ms == 0: one fetch (it returns as soon as records are there, so at
        a steady rate it holds what arrived just before the commit began).
        gather_poll_ms > 0: fetch and transform again, every gather_poll_ms, whatever
        arrives until the commit is done (then once more without waiting), up to
        batch_records_max. At a steady rate a record then waits for the transaction in
        flight and its own, not for one more: with one fetch, what arrives during a
        commit is fetched only when the next one starts, and commits in the one after
        that. Transforming in small pieces also keeps each piece short, so the loop
        answers the transaction's responses promptly. The pieces come from one
        consumer in order, so the batch stays one contiguous range per partition.
        """
        nxt: Batch | None = None
        nxt_outputs: Outputs | None = None
        while True:
            done = may_start()
            room = self.batch_records_max - (len(nxt) if nxt is not None else 0)
            if room <= 0:
                break
            if not self.gather_poll_ms:
                more = await self.fetch()
            else:
                more = await self.fetch(
                    timeout_ms=0 if done else self.gather_poll_ms, max_records=room
                )
            if len(more):
                more_outputs = self._transform(more)
                if nxt is None:
                    nxt, nxt_outputs = more, more_outputs
                else:
                    extend_batch(nxt, more)
                    nxt_outputs.absorb(more_outputs)
                if early is not None:
                    await early(nxt_outputs)
            if done or not self.gather_poll_ms:
                break
        return nxt, nxt_outputs

    def _transform(self, batch: Batch) -> Outputs:
        try:
            return self.transform(batch)
        except Exception:
            rewind(self.consumer, batch)
            raise

    async def fetch(self, timeout_ms: int | None = None, max_records: int | None = None) -> Batch:
        fetched = await self.consumer.getmany(
            timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=max_records or self.batch_records_max,
        )
        if self.validate is None:
            return raw_batch(fetched)
        return decode_batch(fetched, self.validate)

    async def commit(
        self,
        batch: Batch,
        outputs: Outputs,
        producer: AIOKafkaProducer,
        *,
        after: Prior | None = None,
        sent: asyncio.Event | None = None,
    ) -> None:
        """One transaction on producer: outputs, dead letters, offsets, after the
        transaction `after` (commit_in_transaction). On failure abort, rewind the
        consumer to the batch's start and raise TransactionAborted (ProducerFenced and a
        failed abort as they are: the producer is then unusable)."""

        async def send_outputs() -> list[asyncio.Future]:
            futures = []
            for partition, records in outputs.records.items():
                if records:
                    futures += await send_records(producer, self.out_topic, partition, records)
            for topic, partition, key, value, headers in outputs.extras:
                futures.append(
                    await producer.send(topic, value, key=key, partition=partition, headers=headers)
                )
            return futures

        commit_s = await commit_in_transaction(
            self.consumer,
            producer,
            batch,
            send_outputs,
            group_id=self.group_id,
            dlq_topic=self.dlq_topic,
            source=self.source,
            after=after,
            sent=sent,
        )
        if self.on_commit is not None:
            self.on_commit(batch, outputs, commit_s)

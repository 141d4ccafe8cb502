"""The matching service: `orders` in, one Engine per owned partition, `market` out, in
Kafka transactions (docs/matching-service.md).

- Instance I of N owns the partitions p of `orders` with p % N == I (static assignment)
  and commits under the transactional id of exactly that set: aiokafka's offset commits
  in transactions carry no group generation (no KIP-447), so the group cannot fence a
  zombie, but the transactional id does: a restarted instance fences its predecessor.
- Outputs of orders partition p go to market partition p (pipeline.py), so market
  partition p is Engine.process over orders partition p, byte for byte.
- Snapshots (recovery.py) go in the same transaction as the batch they end.
- Start: newest snapshot per partition, silent replay to the committed offset, then
  transactional processing from there. After an aborted batch the engines that ran
  ahead of the rewound consumer are rebuilt the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.common.kafka import (
    Batch,
    decode_valid,
    make_consumer,
    make_producer,
    static_partitions,
    stop_client,
    transactional_ids_for,
)
from services.common.kafka_transactions import set_add_partitions_backoff
from services.common.runner import ServiceContext
from services.matching import envelope_check, recovery
from services.matching.clock import run_clock
from services.matching.config import MatchingSettings
from services.matching.engines import MatchingEngine, engine_class
from services.matching.metrics import MatchingMetrics, matching_metrics
from services.matching.pipeline import Outputs, Pipeline

log = logging.getLogger(__name__)

SOURCE = "matching"
SNAPSHOT_BYTES_MAX = 16 * 1024 * 1024 - 64 * 1024  # the topic's max.message.bytes, less headroom
GAUGES_INTERVAL_S = 5.0


@dataclass(slots=True)
class Base:
    """The newest committed snapshot of a partition (compressed, as written)."""

    value: bytes
    next_offset: int
    written_ms: int


def wall_ms() -> int:
    return int(time.time() * 1000)


class MatchingService:
    def __init__(self, settings: MatchingSettings, metrics: MatchingMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or matching_metrics()
        self.orders = settings.topic("orders")
        self.market = settings.topic("market")
        self.snapshots = settings.topic("matching.snapshots")
        # One group for every instance: the partition sets are disjoint, and one group
        # shows the lag of the whole engine in one place.
        self.group_id = settings.topic_prefix + "matching"
        self.owned: list[int] = []
        self.engine_cls = engine_class(settings.matching_engine)
        self.engines: dict[int, MatchingEngine] = {}
        self.next_offset: dict[int, int] = {}  # engines[p] has processed [.., next_offset)
        self.log_start: dict[int, int] = {}
        self.base: dict[int, Base] = {}
        self.since_snapshot: dict[int, int] = {}  # records since the newest snapshot
        self.snapshot_at: dict[int, float] = {}  # monotonic
        self.consumer: AIOKafkaConsumer | None = None
        self.ready = asyncio.Event()

    # -- run -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, on_ready=None) -> None:
        s = self.settings
        bootstrap = s.kafka_bootstrap
        # Idempotent, not transactional: it writes the clock ticks, and tells the
        # partition counts before anything else starts.
        tick_producer = make_producer(bootstrap, client_id="matching-clock", linger_ms=0)
        await tick_producer.start()
        tasks: list[asyncio.Task] = []
        try:
            n_orders = len(await tick_producer.partitions_for(self.orders))
            n_market = len(await tick_producer.partitions_for(self.market))
            if n_orders != n_market:
                raise RuntimeError(
                    f"{self.orders} has {n_orders} partitions and {self.market} {n_market}: "
                    "matching writes orders partition p to market partition p"
                )
            self.owned = s.owned_partitions(n_orders)
            txn_ids = transactional_ids_for(
                SOURCE, self.orders, self.owned, s.matching_transactional_ids
            )
            log.info(
                "instance %d of %d: partitions %s, transactional ids %s",
                s.matching_instance,
                s.matching_instances,
                self.owned,
                ", ".join(txn_ids),
            )
            self.consumer = make_consumer(
                bootstrap,
                group_id=self.group_id,
                partitions=static_partitions(self.orders, self.owned),
                client_id="matching",
                max_partition_fetch_bytes=s.matching_fetch_partition_bytes,
                fetch_max_wait_ms=s.matching_fetch_max_wait_ms,
            )
            set_add_partitions_backoff(s.matching_add_partitions_backoff_ms / 1000)

            def new_producer(slot: int):
                return make_producer(
                    bootstrap,
                    transactional_id=txn_ids[slot],
                    client_id="matching",
                    linger_ms=s.matching_linger_ms,
                    max_batch_size=s.matching_max_batch_bytes,
                    max_request_size=16 * 1024 * 1024,  # snapshots; the topic allows 16 MiB
                    retry_backoff_ms=s.matching_retry_backoff_ms,
                )

            async def on_start(consumer):
                await self.recover(consumer)
                if s.matching_tick_interval_ms > 0:
                    tasks.append(
                        asyncio.create_task(
                            run_clock(
                                tick_producer,
                                self.orders,
                                self.owned,
                                lambda p: self.engines[p].now,
                                s.matching_tick_interval_ms,
                                stop,
                            ),
                            name="clock",
                        )
                    )
                tasks.append(asyncio.create_task(self._gauges(stop), name="gauges"))
                self.ready.set()
                if on_ready is not None:
                    on_ready()

            pipeline = Pipeline(
                consumer=self.consumer,
                new_producer=new_producer,
                transform=self.transform,
                out_topic=self.market,
                group_id=self.group_id,
                dlq_topic=s.topic("dlq"),
                source=SOURCE,
                # Records come undecoded: transform decodes them (the native engine
                # reads plain envelopes from their bytes). Only an undecodable or
                # malformed envelope is a dead letter: bad data is the engine's to
                # answer (order.rejected invalid), in the market log.
                validate=None,
                batch_records_max=s.matching_batch_records_max,
                poll_timeout_ms=s.matching_poll_timeout_ms,
                gather_poll_ms=s.matching_gather_poll_ms,
                producers=s.matching_transactional_ids,
                transactions_in_flight=s.matching_transactions_in_flight,
                early_begin=s.matching_early_begin,
                on_start=on_start,
                on_commit=self.on_commit,
                on_abort=self.on_abort,
            )
            await pipeline.run(stop)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await stop_client(tick_producer)

    # -- recovery --------------------------------------------------------------------

    async def recover(self, consumer: AIOKafkaConsumer) -> None:
        """Newest snapshot per owned partition, then silent replay up to the committed
        offset; leaves the consumer there."""
        s = self.settings
        started = time.perf_counter()
        snaps = await recovery.latest_snapshots(
            s.kafka_bootstrap,
            self.snapshots,
            self.owned,
            timeout_s=s.matching_recovery_timeout_s,
        )
        tps = {p: TopicPartition(self.orders, p) for p in self.owned}
        starts = await consumer.beginning_offsets(list(tps.values()))
        plan = {}
        for p, tp in tps.items():
            self.log_start[p] = starts[tp]
            committed = await consumer.committed(tp)
            if committed is None:
                committed = starts[tp]
            snap = snaps.get(p)
            if snap is not None and starts[tp] <= snap.next_offset <= committed:
                engine, start = self.engine_cls.restore(snap.state), snap.next_offset
                self.base[p] = Base(
                    zlib.compress(snap.state, recovery.ZLIB_LEVEL),
                    snap.next_offset,
                    snap.written_ms,
                )
            else:
                if snap is not None:
                    log.warning(
                        "partition %d: snapshot at %d outside [%d, %d]: ignored",
                        p,
                        snap.next_offset,
                        starts[tp],
                        committed,
                    )
                engine, start = self.engine_cls(), starts[tp]
            plan[p] = (engine, start, committed)
            consumer.seek(tp, committed)
        restored = time.perf_counter()
        replayed = await recovery.replay(
            s.kafka_bootstrap,
            self.orders,
            plan,
            validate=envelope_check.validate_envelope,
            timeout_s=s.matching_recovery_timeout_s,
        )
        self.metrics.replayed.inc(replayed)
        now = time.monotonic()
        for p, (engine, start, committed) in plan.items():
            self.engines[p] = engine
            self.next_offset[p] = committed
            self.since_snapshot[p] = committed - start
            self.snapshot_at[p] = now
        log.info(
            "recovered %d partitions: %d snapshots loaded in %.2fs, %d commands replayed in %.2fs",
            len(plan),
            len(snaps),
            restored - started,
            replayed,
            time.perf_counter() - restored,
        )

    async def on_abort(self, consumer: AIOKafkaConsumer) -> None:
        """The consumer is back at the aborted batch's start: rebuild every engine that
        ran ahead of it from its newest committed snapshot plus a silent replay."""
        self.metrics.transactions.labels("aborted").inc()
        plan = {}
        for p in self.owned:
            position = await consumer.position(TopicPartition(self.orders, p))
            if self.next_offset[p] == position:
                continue
            base = self.base.get(p)
            if base is not None:
                plan[p] = (
                    self.engine_cls.restore(zlib.decompress(base.value)),
                    base.next_offset,
                    position,
                )
            else:
                plan[p] = (self.engine_cls(), self.log_start[p], position)
        replayed = await recovery.replay(
            self.settings.kafka_bootstrap,
            self.orders,
            plan,
            validate=envelope_check.validate_envelope,
            timeout_s=self.settings.matching_recovery_timeout_s,
        )
        self.metrics.replayed.inc(replayed)
        for p, (engine, start, position) in plan.items():
            self.engines[p] = engine
            self.next_offset[p] = position
            self.since_snapshot[p] = position - start

    # -- the batch -------------------------------------------------------------------

    def transform(self, batch: Batch) -> Outputs:
        """Each partition's records through its engine, straight from their bytes
        (process_raw: the native core reads plain envelopes itself and hands the rest to
        decode_valid, which dead-letters what decode_batch would); outputs encoded for
        the same partition of market; snapshots that are due as extras. The batch comes
        undecoded (raw_batch); dead records leave batch.records for batch.dead."""
        by_partition: dict[int, list[ConsumerRecord]] = {}
        for record in batch.records:
            records = by_partition.get(record.partition)
            if records is None:
                records = by_partition[record.partition] = []
            records.append(record)
        out = Outputs()
        types = out.meta["types"] = Counter()
        dead = batch.dead
        dead_before = len(dead)
        validate = envelope_check.validate_envelope
        for p, records in by_partition.items():

            def fallback(value, i, records=records):
                return decode_valid(records[i], validate, dead)

            # (key, value) bytes straight from the engine: the native one never builds
            # the command or event dicts at all.
            out.records[p] = self.engines[p].process_raw(
                [r.value for r in records], fallback, types
            )
        if len(dead) > dead_before:
            gone = {id(letter.record) for letter in dead[dead_before:]}
            batch.records = [r for r in batch.records if id(r) not in gone]
        for tp, next_offset in batch.offsets.items():
            p = tp.partition
            self.since_snapshot[p] += next_offset - self.next_offset[p]
            self.next_offset[p] = next_offset
        out.meta["bases"] = {}
        self._add_due_snapshots(out)
        return out

    def _add_due_snapshots(self, out: Outputs) -> None:
        s = self.settings
        now = time.monotonic()
        for p in self.owned:
            since = self.since_snapshot[p]
            if not since:
                continue
            by_count = 0 < s.matching_snapshot_every_commands <= since
            by_time = 0 < s.matching_snapshot_interval_s <= now - self.snapshot_at[p]
            if not (by_count or by_time):
                continue
            written = wall_ms()
            key, value, headers = recovery.snapshot_record(
                p, self.engines[p], self.next_offset[p], written
            )
            self.snapshot_at[p] = now
            if len(value) > SNAPSHOT_BYTES_MAX:
                log.error(
                    "partition %d: snapshot of %d bytes exceeds %d: not written; "
                    "restarts replay from the previous one",
                    p,
                    len(value),
                    SNAPSHOT_BYTES_MAX,
                )
                self.since_snapshot[p] = 0  # not again at every batch
                continue
            out.extras.append((self.snapshots, 0, key, value, headers))
            out.meta["bases"][p] = Base(value, self.next_offset[p], written)
            # Counted from here, not from the commit: the next batch is transformed
            # while this one commits (pipeline.py), and must not snapshot again.
            self.since_snapshot[p] = 0

    def on_commit(self, batch: Batch, out: Outputs, commit_s: float) -> None:
        m = self.metrics
        m.transactions.labels("committed").inc()
        m.commands.inc(len(batch.records))
        for type_, n in out.meta["types"].items():
            m.events.labels(type_).inc(n)
        m.batch_commands.observe(len(batch))
        m.batch_seconds.observe(time.perf_counter() - batch.fetched_at_s)
        m.commit_seconds.observe(commit_s)
        for p, base in out.meta["bases"].items():
            self.base[p] = base
            m.snapshot_bytes.labels(str(p)).set(len(base.value))

    # -- gauges ----------------------------------------------------------------------

    async def _gauges(self, stop: asyncio.Event) -> None:
        m = self.metrics
        while not stop.is_set():
            with contextlib.suppress(Exception):
                self.update_gauges()
                for p in self.owned:
                    tp = TopicPartition(self.orders, p)
                    lso = self.consumer.last_stable_offset(tp)
                    if lso is not None:
                        m.lag.labels(str(p)).set(max(0, lso - await self.consumer.position(tp)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GAUGES_INTERVAL_S):
                    await stop.wait()

    def update_gauges(self) -> None:
        resting = auctions = 0
        for engine in self.engines.values():
            engine_resting, engine_auctions = engine.order_counts()
            resting += engine_resting
            auctions += engine_auctions
        self.metrics.resting_orders.set(resting)
        self.metrics.open_auctions.set(auctions)
        now = wall_ms()
        for p, base in self.base.items():
            self.metrics.snapshot_age.labels(str(p)).set(max(0.0, (now - base.written_ms) / 1000))


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    if not isinstance(settings, MatchingSettings):
        settings = MatchingSettings(**settings.model_dump())
    service = MatchingService(settings)
    await service.run(ctx.stop, on_ready=ctx.mark_ready)

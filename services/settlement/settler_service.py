"""The settler's adapter: `market` and `shipments` in, one PostgreSQL transaction per
batch, Kafka offsets committed after it (docs/settlement.md "The settler").

Exactly-once effect without Kafka transactions (DESIGN "Exactly-once effect"): per batch,
ONE PostgreSQL transaction
1. inserts the ids of the events it acts on into settler_inbox (ON CONFLICT DO NOTHING):
   only ids it has never taken go on;
2. locks their load_hold rows (FOR UPDATE, in load id order) and reads the shipments
   events deferred for the loads of the batch's deals;
3. runs the pure rules (settler.Rules) in log order;
4. applies every transfer with store.apply_in, and reads the results: anything but `ok`
   or `exists` rolls the transaction back and the batch is done again event by event,
   where a refused event is undone, kept in settler_refusals and counted, never dropped;
5. writes the rows, the deferred events, the outcomes, and the outbox rows;
then commits, and only then commits the Kafka offsets. A crash between the two delivers
the batch again and the inbox drops every event of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from services.common.envelope import decode, encode
from services.common.kafka import (
    Batch,
    commit_consumed,
    fetch_batch,
    make_consumer,
    make_producer,
    static_partitions,
)
from services.common.kafka_transactions import rewind
from services.common.metrics import kafka_metrics
from services.common.runner import ServiceContext
from services.settlement import settler as rules
from services.settlement import store
from services.settlement.config import SettlementSettings
from services.settlement.holds import COLUMNS, LoadHold
from services.settlement.ledger import EXISTS, LINKED_EVENT_FAILED, OK
from services.settlement.metrics import SettlementMetrics, settlement_metrics
from services.settlement.postings import FeeSchedule
from services.settlement.settler import APPLIED, REFUSED, Effect, Rules
from services.settlement.store import RETRYABLE, apply_in

log = logging.getLogger(__name__)

SOURCE = "settlement"
OUTBOX_TABLE = "settler_outbox"
OUTBOX_TOPIC = "settlement"  # short name; the relay adds the prefix
RETRIES_MAX = 5  # a batch that lost a race to another transaction, run again
RETRY_PAUSE_S = 0.01
FAILURES_IN_A_ROW_MAX = 10  # batches that failed (database away): then the process stops
POLL_TIMEOUT_MS = 100
LAG_INTERVAL_S = 5.0

# Inserted as applied and corrected in the same transaction once the rules have run.
_INSERT_INBOX = """
INSERT INTO settler_inbox (event_id, type, load_id, outcome, ts_ms)
SELECT u.id, u.type, u.load_id, 'applied', u.ts
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(id, type, load_id, ts)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
_LOCK_ROWS = f"""
SELECT {", ".join(COLUMNS)} FROM load_hold
WHERE load_id IN (SELECT unnest($1::text[]))
ORDER BY load_id
FOR UPDATE
"""
_READ_DEFERRED = """
SELECT event_id, load_id, envelope FROM settler_deferred
WHERE load_id IN (SELECT unnest($1::text[]))
ORDER BY seq
FOR UPDATE
"""
_UPDATE_ROWS = """
UPDATE load_hold h
SET hold_id = u.hold_id, hold_fen = u.hold_fen, state = u.state, deal_id = u.deal_id,
    carrier_id = u.carrier_id, price_fen = u.price_fen, updated_ms = u.updated_ms
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
            $7::bigint[], $8::bigint[])
     AS u(load_id, hold_id, hold_fen, state, deal_id, carrier_id, price_fen, updated_ms)
WHERE h.load_id = u.load_id
"""
_DELETE_DEFERRED = "DELETE FROM settler_deferred WHERE event_id IN (SELECT unnest($1::text[]))"
_UPDATE_INBOX = """
UPDATE settler_inbox i SET outcome = u.outcome, reason = u.reason
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, outcome, reason)
WHERE i.event_id = u.id
"""


_APPLIED_OR_LINKED = (OK, EXISTS, LINKED_EVENT_FAILED)


class _LedgerRefused(Exception):
    """The ledger refused a transfer of the fast path: roll back, redo event by event."""


@dataclass(slots=True)
class BatchReport:
    """What one committed settler transaction did (for metrics and tests)."""

    new: int = 0  # events never taken before
    outcomes: Counter = field(default_factory=Counter)  # (type, outcome) -> count
    ledger_refusals: Counter = field(default_factory=Counter)  # result word -> count
    deferred_delta: int = 0  # rows added to settler_deferred less rows removed
    emitted: list[dict[str, Any]] = field(default_factory=list)  # settlement events queued
    careful: bool = False  # redone event by event after a refusal


class SettlerService:
    """The settler: `await SettlerService(settings, pool, metrics).run(ctx)`.

    `pool` has search_path = the settlement schema, migrated (ledger, gate, settler).
    `ready` is set once the consumer has started. `settle(events)` is one batch's
    transaction, for the loop and for tests."""

    def __init__(
        self,
        settings: SettlementSettings,
        pool: asyncpg.Pool,
        metrics: SettlementMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics or settlement_metrics()
        self.kafka_metrics = kafka_metrics("settlement")
        self.fees = FeeSchedule(settings.fee_bps, settings.fee_minimum_fen)
        # One group for every settler instance: disjoint partition sets, one lag view.
        self.group_id = settings.topic_prefix + "settlement-settler"
        self.market = settings.topic("market")
        self.shipments = settings.topic("shipments")
        self.ready = asyncio.Event()

    # -- the loop --------------------------------------------------------------------

    async def run(self, ctx: ServiceContext) -> None:
        s = self.settings
        # Not transactional: it only writes dead letters (at least once, see
        # commit_consumed); the settlement events leave through the outbox.
        producer = make_producer(s.kafka_bootstrap, client_id="settlement-settler")
        await producer.start()
        try:
            partitions: list[TopicPartition] = []
            for topic in (self.market, self.shipments):
                count = len(await producer.partitions_for(topic))
                partitions += static_partitions(topic, s.owned_partitions(count))
            consumer = make_consumer(s.kafka_bootstrap, group_id=self.group_id,
                                     partitions=partitions, client_id="settlement-settler")  # fmt: skip
            await consumer.start()
            try:
                await self._loop(ctx, consumer, producer)
            finally:
                await consumer.stop()
        finally:
            await producer.stop()

    async def _loop(self, ctx: ServiceContext, consumer: AIOKafkaConsumer, producer) -> None:
        s = self.settings
        async with self.pool.acquire() as conn:
            self.metrics.settler_deferred.set(
                await conn.fetchval("SELECT count(*) FROM settler_deferred")
            )
        self.ready.set()
        log.info("settler: %d partitions of %s and %s", len(consumer.assignment()),
                 self.market, self.shipments)  # fmt: skip
        failures = 0
        lag_at = 0.0
        while not ctx.stop.is_set():
            if time.monotonic() - lag_at >= LAG_INTERVAL_S:
                lag_at = time.monotonic()
                await self._update_lag(consumer)
            batch = await fetch_batch(consumer, max_records=s.settler_batch_max,
                                      timeout_ms=POLL_TIMEOUT_MS, metrics=self.kafka_metrics)  # fmt: skip
            if not len(batch):
                continue
            try:
                await self.settle(self.in_log_order(batch))
            except Exception:
                # Nothing of the batch is committed: take it again from its start.
                rewind(consumer, batch)
                failures += 1
                if failures >= FAILURES_IN_A_ROW_MAX:
                    raise
                log.exception("settler batch of %d failed (%d in a row); again", len(batch),
                              failures)  # fmt: skip
                await ctx.sleep_unless_stopped(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            # After the database commit: a crash before this line re-delivers the batch,
            # and the inbox drops it.
            await commit_consumed(consumer, producer, batch, group_id=self.group_id,
                                  dlq_topic=s.topic("dlq"), source=SOURCE,
                                  metrics=self.kafka_metrics)  # fmt: skip

    def in_log_order(self, batch: Batch) -> list[dict[str, Any]]:
        """The batch's events, market before shipments, each partition in its order.

        Order matters within a load: its market events share a lane's partition, its
        shipments events a deal's. Between the topics there is no order to keep; taking
        market first lets a deal.made precede the shipments events of the same batch
        (a shipments event that still comes first is deferred, not lost)."""
        pairs = zip(batch.records, batch.messages, strict=True)
        ordered = sorted(pairs, key=lambda rm: rm[0].topic != self.market)  # stable
        return [m for _, m in ordered]

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            lso = consumer.last_stable_offset(tp)
            if lso is not None:
                short = "market" if tp.topic == self.market else "shipments"
                lag = max(0, lso - await consumer.position(tp))
                self.metrics.settler_lag.labels(short, str(tp.partition)).set(lag)

    def _count(self, report: BatchReport) -> None:
        m = self.metrics
        for (type_, outcome), n in report.outcomes.items():
            m.settler_events.labels(type_, outcome).inc(n)
        for result, n in report.ledger_refusals.items():
            m.settler_ledger_refusals.labels(result).inc(n)
        m.settler_deferred.inc(report.deferred_delta)
        if report.new:
            m.settler_batch_events.observe(report.new)

    # -- one batch, one transaction ---------------------------------------------------

    async def settle(self, events: list[dict[str, Any]]) -> BatchReport:
        """Apply a batch of market and shipments envelopes (in log order) in one
        transaction; run again when it loses a race (store.RETRYABLE), and event by
        event when the ledger refuses a transfer. Events seen before do nothing. Counted
        in the metrics once committed."""
        careful = False
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    report = await self._settle_in(conn, events, careful)
            except _LedgerRefused as exc:
                log.error("settler: the ledger refused %s; redoing the batch event by event", exc)
                self.metrics.settler_batch_retries.labels("refused").inc()
                careful = True
                continue
            except RETRYABLE as exc:
                attempt += 1
                if attempt > RETRIES_MAX:
                    raise
                log.info("settler batch lost a race (%s); again", type(exc).__name__)
                self.metrics.settler_batch_retries.labels("race").inc()
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
                continue
            self.metrics.settler_batch_seconds.observe(time.perf_counter() - started)
            report.careful = careful
            self._count(report)
            return report

    async def _settle_in(self, conn: asyncpg.Connection, events: list[dict[str, Any]],
                         careful: bool) -> BatchReport:  # fmt: skip
        report = BatchReport()
        taken: dict[str, dict[str, Any]] = {}
        for e in events:
            if e["type"] in rules.TYPES:
                taken.setdefault(e["id"], e)  # the same id twice in a batch: the first
        if not taken:
            return report
        # For the whole transaction (so apply_in need not set it again): every statement
        # here looks rows up by key, and the planner's generic plans went wrong on these
        # tables.
        await conn.execute(store.PLANNER)
        ids = sorted(taken)  # two instances inserting the same ids queue, in one order
        new_ids = {r[0] for r in await conn.fetch(
            _INSERT_INBOX, ids, [taken[i]["type"] for i in ids],
            [rules.load_id_of(taken[i]) for i in ids], [taken[i]["ts"] for i in ids],
        )}  # fmt: skip
        fresh = [e for e in taken.values() if e["id"] in new_ids]
        report.new = len(fresh)
        if not fresh:
            return report

        load_ids = sorted({lid for e in fresh if (lid := rules.load_id_of(e)) is not None})
        rows = {r[0]: LoadHold(*r) for r in await conn.fetch(_LOCK_ROWS, load_ids)}
        deal_loads = sorted({e["data"]["load_id"] for e in fresh if e["type"] == "deal.made"})
        deferred: dict[str, list[dict[str, Any]]] = {}
        stored: set[str] = set()
        if deal_loads:
            for r in await conn.fetch(_READ_DEFERRED, deal_loads):
                deferred.setdefault(r[1], []).append(decode(r[2]))
                stored.add(r[0])
        batch_rules = Rules(self.fees, rows, deferred)

        effects: list[Effect] = []
        ledger_results: dict[str, list[str]] = {}  # event id -> results, when refused
        if not careful:
            effects = list(batch_rules.effects(fresh))
            transfers = [t for ef in effects for t in ef.transfers]
            results = await apply_in(conn, transfers, set_planner=False)
            bad = [(t.id, r) for t, r in zip(transfers, results, strict=True)
                   if r not in _APPLIED_OR_LINKED]  # fmt: skip
            bad = bad or [(t.id, r) for t, r in zip(transfers, results, strict=True)
                          if r not in (OK, EXISTS)]  # fmt: skip
            if bad:
                raise _LedgerRefused(f"{len(bad)} transfers, first {bad[0]}")
        else:
            for ef in batch_rules.effects(fresh):
                if ef.transfers:
                    results = await apply_in(conn, ef.transfers, set_planner=False)
                    # The words that say why (a failed chain's other legs only say
                    # linked_event_failed).
                    bad = [r for r in results if r not in _APPLIED_OR_LINKED] or [
                        r for r in results if r not in (OK, EXISTS)]  # fmt: skip
                    if bad:
                        # A failed chain leaves nothing in the ledger; the row goes back.
                        batch_rules.undo(ef)
                        log.error("settler: the ledger refused %s %s of load %s: %s",
                                  ef.event["type"], ef.event["id"], ef.load_id, results)  # fmt: skip
                        report.ledger_refusals.update(bad)
                        ledger_results[ef.event["id"]] = list(results)
                        effects.append(ef._replace(outcome=REFUSED, reason=bad[0], transfers=(),
                                                       after=None, emitted=()))  # fmt: skip
                        continue
                effects.append(ef)
        refusals = [(ef, ledger_results.get(ef.event["id"], []))
                    for ef in effects if ef.outcome == REFUSED]  # fmt: skip

        await self._write(conn, batch_rules, effects, refusals, stored, report)
        return report

    async def _write(self, conn: asyncpg.Connection, batch_rules: Rules, effects: list[Effect],
                     refusals: list[tuple[Effect, list[str]]], stored: set[str],
                     report: BatchReport) -> None:  # fmt: skip
        changed = [batch_rules.rows[lid] for lid in sorted(batch_rules.changed)]
        if changed:
            await conn.execute(_UPDATE_ROWS, *([getattr(r, c) for r in changed] for c in (
                "load_id", "hold_id", "hold_fen", "state", "deal_id", "carrier_id",
                "price_fen", "updated_ms")))  # fmt: skip

        waiting = {e["id"]: e for evs in batch_rules.deferred.values() for e in evs}
        gone = sorted(stored - waiting.keys())
        added = [e for i, e in waiting.items() if i not in stored]
        if gone:
            await conn.execute(_DELETE_DEFERRED, gone)
        if added:
            await conn.copy_records_to_table(
                "settler_deferred",
                records=[(e["id"], e["data"]["load_id"], encode(e), e["ts"]) for e in added],
                columns=("event_id", "load_id", "envelope", "ts_ms"),
            )
        report.deferred_delta = len(added) - len(gone)

        # The last effect of an event is its outcome (a deferred event applied later in
        # the same batch has two).
        final: dict[str, Effect] = {}
        for ef in effects:
            final[ef.event["id"]] = ef
            report.outcomes[(ef.event["type"], ef.outcome)] += 1
        fix = [ef for i, ef in final.items() if ef.outcome != APPLIED or ef.reason or i in stored]
        if fix:
            await conn.execute(_UPDATE_INBOX, [ef.event["id"] for ef in fix],
                               [ef.outcome for ef in fix], [ef.reason for ef in fix])  # fmt: skip
        if refusals:
            await conn.copy_records_to_table(
                "settler_refusals",
                records=[
                    (
                        ef.event["id"],
                        ef.event["type"],
                        ef.load_id,
                        ef.reason,
                        results,
                        encode(ef.event),
                        ef.event["ts"],
                    )
                    for ef, results in refusals
                ],  # fmt: skip
                columns=("event_id", "type", "load_id", "reason", "results", "envelope", "ts_ms"),
            )
        outbox = [e for ef in effects for e in ef.emitted]
        if outbox:
            await conn.copy_records_to_table(
                OUTBOX_TABLE,
                records=[
                    (OUTBOX_TOPIC, e["key"], encode(e), e["id"], e["type"], e["key"])
                    for e in outbox
                ],  # fmt: skip
                columns=("topic", "key", "value", "event_id", "type", "load_id"),
            )
        report.emitted = outbox

"""The funding gate's adapter: `commands` in; `orders`, `settlement` and `dlq` out; the
decisions, the holds and the ledger in PostgreSQL (docs/settlement.md "The funding gate").

Exactly once, per batch (DESIGN "Exactly-once effect"):
1. ONE PostgreSQL transaction reads the decisions already recorded for the batch's
   command ids; for the others it reads the participant and load_hold rows they need,
   plans the decisions (gate.py), opens accounts, applies the holds, deposits and
   withdrawals (store.apply_in, which locks the accounts), writes participants and
   load_hold rows, and records every new decision with its exact output records; commit.
2. ONE Kafka transaction produces the outputs of every command of the batch, recorded
   ones of an earlier run that never reached its commit included, with the input offsets.
A crash between 1 and 2 leaves decisions without their outputs: the next run (the same
transactional id, so it first aborts whatever the crashed one left open) reads the same
records again, finds their decisions and produces them as recorded, byte for byte. A
command id recorded at another offset is a duplicate of an earlier command: dropped.

Static assignment like matching: instance I of N owns the partitions p of `commands`
with p % N == I and commits under the transactional id of exactly that set. A command
from partition p goes to partition p of `orders` (both have the same count), so each
lane's order is kept and orders partition p is the gate's decisions over commands
partition p; settlement events are partitioned by their key as a producer would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from services.common import schemas
from services.common.kafka import (
    Batch,
    count_dead,
    fetch_batch,
    make_consumer,
    make_producer,
    static_partitions,
    stop_client,
    transactional_id_for,
)
from services.common.kafka_transactions import TransactionAborted, commit_in_transaction, rewind
from services.common.metrics import kafka_metrics
from services.common.runner import ServiceContext
from services.settlement import gate, postings, store
from services.settlement import holds as holds_table
from services.settlement.config import SettlementSettings
from services.settlement.metrics import SettlementMetrics, settlement_metrics

log = logging.getLogger(__name__)

SOURCE = "settlement"
TXN_SERVICE = "settlement-gate"  # transactional ids: settlement-gate@<commands>#<partitions>
ABORTS_IN_A_ROW_MAX = 5
POLL_TIMEOUT_MS = 100
GAUGES_INTERVAL_S = 5.0

Produced = tuple[str, int, bytes | None, bytes]  # (topic address, partition, key, value)

_READ_DECISIONS = """
SELECT d.command_id, d.partition, d."offset", d.out_topics, d.out_partitions, d.out_keys,
       d.out_values
FROM unnest($1::text[]) AS w(id) JOIN gate_decisions d ON d.command_id = w.id
"""
_READ_PARTICIPANTS = """
SELECT p.id, p.role, p.status, p.updated_ms
FROM unnest($1::text[]) AS w(id) JOIN gate_participants p ON p.id = w.id
"""
_READ_HELD = (
    "SELECT h.load_id FROM unnest($1::text[]) AS w(id) JOIN load_hold h ON h.load_id = w.id"
)
# In id order, like store.py's locks: two instances opening the same accounts queue
# rather than deadlock. An account already open stays as it is.
_OPEN_ACCOUNTS = """
INSERT INTO accounts (id, kind, debits_must_not_exceed_credits, credits_must_not_exceed_debits)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::boolean[]) ORDER BY 1
ON CONFLICT (id) DO NOTHING
"""
_UPSERT_PARTICIPANTS = """
INSERT INTO gate_participants (id, role, status, updated_ms)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
ON CONFLICT (id) DO UPDATE
SET role = excluded.role, status = excluded.status, updated_ms = excluded.updated_ms
"""
_DECISION_COLUMNS = (
    "command_id", "command_type", "partition", "offset", "outcome", "reason", "out_topics",
    "out_partitions", "out_keys", "out_values", "ts_ms",
)  # fmt: skip


@dataclass(slots=True)
class Decided:
    """What one batch's PostgreSQL transaction gave: the records to produce, in order."""

    records: list[Produced] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)  # (outcome, reason) of new decisions
    resent: int = 0
    duplicates: int = 0


def validate_command(envelope) -> None:
    """schemas.validate, and a type the gate knows: anything else is a dead letter."""
    schemas.validate(envelope)
    if not gate.is_command(envelope["type"]):
        raise schemas.ValidationError(f"{envelope['type']}: not a command of the funding gate")


class FundingGate:
    """The funding gate of one instance; `await FundingGate(settings, pool).run(ctx)`.

    The pool's search_path is the settlement schema (settings.db_schema). run() applies
    the settlement migrations and opens the platform accounts (both idempotent) first.
    """

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
        self.rules = gate.Rules(auction_hold_cap_fen=settings.auction_hold_cap_fen)
        self.commands = settings.topic("commands")
        self.topics = {gate.ORDERS: settings.topic("orders"),
                       gate.SETTLEMENT: settings.topic("settlement")}  # fmt: skip
        self.dlq = settings.topic("dlq")
        # One group for every instance: disjoint partition sets, one place to see the lag.
        self.group_id = settings.topic_prefix + "settlement-gate"
        self.owned: list[int] = []
        self.settlement_partitions = 0
        self.committed: dict[int, int] = {}  # next offset per owned partition, at commit
        self.ready = asyncio.Event()

    async def run(self, ctx: ServiceContext) -> None:
        await self.run_until(ctx.stop, on_ready=ctx.mark_ready)

    async def run_until(
        self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Serve until stop is set; the batch in hand is committed (or aborted) first."""
        s = self.settings
        await store.migrate(self.pool)
        await store.LedgerStore(self.pool).open_accounts(postings.platform_accounts())
        await self._read_partition_counts()
        txn_id = transactional_id_for(TXN_SERVICE, self.commands, self.owned)
        log.info("gate instance %d of %d: partitions %s, transactional id %s",
                 s.settlement_instance, s.settlement_instances, self.owned, txn_id)  # fmt: skip

        def new_producer() -> AIOKafkaProducer:
            return make_producer(
                s.kafka_bootstrap, transactional_id=txn_id, client_id="settlement-gate"
            )

        # The producer first: its InitProducerId settles whatever transaction the previous
        # owner of the id left open, so the committed offsets the consumer reads are final.
        producer = new_producer()
        await producer.start()
        consumer = make_consumer(
            s.kafka_bootstrap,
            group_id=self.group_id,
            partitions=static_partitions(self.commands, self.owned),
            client_id="settlement-gate",
        )
        try:
            await consumer.start()
            for p in self.owned:
                self.committed[p] = await consumer.position(TopicPartition(self.commands, p))
            self.ready.set()
            if on_ready is not None:
                on_ready()
            aborts = 0
            gauges_at = 0.0
            while not stop.is_set():
                if time.monotonic() - gauges_at >= GAUGES_INTERVAL_S:
                    gauges_at = time.monotonic()
                    await self._update_lag(consumer)
                batch = await fetch_batch(
                    consumer,
                    max_records=s.gate_batch_max,
                    timeout_ms=POLL_TIMEOUT_MS,
                    validate=validate_command,
                    metrics=self.kafka_metrics,
                )
                if not len(batch):
                    continue
                try:
                    decided = await self.decide(batch)
                except BaseException:
                    rewind(consumer, batch)
                    raise
                try:
                    commit_s = await self.commit(consumer, producer, batch, decided)
                except TransactionAborted:
                    self.metrics.gate_transactions.labels("aborted").inc()
                    aborts += 1
                    log.warning("gate batch aborted (%d in a row)", aborts, exc_info=True)
                    if aborts >= ABORTS_IN_A_ROW_MAX:
                        raise
                    # A new producer, a new epoch: aiokafka keeps counting the sequence
                    # numbers of refused records (kafka_transactions.run_transactional).
                    await stop_client(producer)
                    producer = new_producer()
                    await producer.start()
                    continue
                aborts = 0
                self._on_commit(batch, decided, commit_s)
        finally:
            await stop_client(consumer)
            await stop_client(producer)

    # -- the PostgreSQL transaction ---------------------------------------------------------

    async def decide(self, batch: Batch) -> Decided:
        """The batch's decisions, recorded: one transaction, run again if it lost a race
        with another instance (a load id or account both thought new)."""
        if not batch.messages:
            return Decided()
        started = time.perf_counter()
        for attempt in range(store.RETRIES_MAX + 1):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    decided = await self._decide_in(conn, batch)
                break
            except store.RETRYABLE as exc:
                if attempt == store.RETRIES_MAX:
                    raise
                log.info("gate batch lost a race (%s); again", type(exc).__name__)
                await asyncio.sleep(store.RETRY_PAUSE_S * (attempt + 1))
        self.metrics.gate_decide_seconds.observe(time.perf_counter() - started)
        return decided

    async def _decide_in(self, conn: asyncpg.Connection, batch: Batch) -> Decided:
        out = Decided()
        # The ledger's planner settings (store.py explains them), before the first
        # statement: gate_decisions and load_hold only grow, and every statement here
        # looks a batch's keys up in them, where a generic plan or a hash join over a
        # scan of the whole table would cost more with every batch.
        await conn.execute(store.PLANNER)
        ids = [m["id"] for m in batch.messages]
        recorded = {r[0]: r for r in await conn.fetch(_READ_DECISIONS, ids)}
        # Each message's records, in batch order: recorded ones now, new ones after planning.
        slots: list[list[Produced] | int] = []
        new: list[gate.Command] = []
        new_at: list[tuple[int, int]] = []  # (partition, offset) of each new command
        seen: set[str] = set()
        for message, record in zip(batch.messages, batch.records, strict=True):
            cid = message["id"]
            row = recorded.get(cid)
            if row is not None and (row[1], row[2]) == (record.partition, record.offset):
                out.resent += 1
                slots.append(list(zip(row[3], row[4], row[5], row[6], strict=True)))
            elif row is not None or cid in seen:
                out.duplicates += 1
                log.warning("command %s at %s/%d again at %d: dropped as a duplicate", cid,
                            record.topic, record.partition, record.offset)  # fmt: skip
                slots.append([])
            else:
                seen.add(cid)
                slots.append(len(new))
                new.append(gate.Command(message, record.value, record.key))
                new_at.append((record.partition, record.offset))
        if new:
            decisions = await self._decide_new(conn, new, new_at)
            for i, slot in enumerate(slots):
                if isinstance(slot, int):
                    decision, partition = decisions[slot], new_at[slot][0]
                    slots[i] = [self._produced(o, partition) for o in decision.outputs]
                    out.outcomes[(decision.outcome, decision.reason or "")] += 1
        out.records = [r for slot in slots for r in slot]  # type: ignore[union-attr]
        return out

    async def _decide_new(self, conn: asyncpg.Connection, commands: list[gate.Command],
                          at: list[tuple[int, int]]) -> list[gate.Decision]:  # fmt: skip
        rows = await conn.fetch(_READ_PARTICIPANTS, sorted(gate.participant_ids(commands)))
        participants = {r[0]: gate.Participant(*r) for r in rows}
        held = {r[0] for r in await conn.fetch(_READ_HELD, sorted(gate.load_ids(commands)))}
        plan = gate.plan_batch(commands, participants, held, self.rules)

        if plan.accounts:
            accounts = sorted({a.id: a for a in plan.accounts}.values(), key=lambda a: a.id)
            await conn.execute(
                _OPEN_ACCOUNTS,
                [a.id for a in accounts],
                [a.kind for a in accounts],
                [a.debits_must_not_exceed_credits for a in accounts],
                [a.credits_must_not_exceed_debits for a in accounts],
            )
        results = await store.apply_in(conn, plan.transfers, set_planner=False)
        decisions = plan.decide(results)

        if plan.participants:
            ps = list(plan.participants.values())
            await conn.execute(_UPSERT_PARTICIPANTS, [p.id for p in ps], [p.role for p in ps],
                               [p.status for p in ps], [p.updated_ms for p in ps])  # fmt: skip
        holds = [d.load_hold for d in decisions if d.load_hold is not None]
        if holds:
            # A LoadHold is its row, in COLUMNS order.
            await conn.copy_records_to_table(
                "load_hold", columns=holds_table.COLUMNS, records=holds
            )
        rows = []
        for c, (partition, offset), d in zip(commands, at, decisions, strict=True):
            if d.outcome == gate.LEDGER_REFUSED:
                log.error("command %s (%s): the ledger refused its transfer: %s; nothing "
                          "produced", c.id, c.type, d.reason)  # fmt: skip
            produced = [self._produced(o, partition) for o in d.outputs]
            rows.append((c.id, c.type, partition, offset, d.outcome, d.reason,
                         [p[0] for p in produced], [p[1] for p in produced],
                         [p[2] for p in produced], [p[3] for p in produced], c.envelope["ts"]))  # fmt: skip
        # A plain COPY, not ON CONFLICT: an instance that decided one of these commands
        # meanwhile (a zombie still running) makes this batch fail on the key and run
        # again, now reading its decision.
        await conn.copy_records_to_table("gate_decisions", columns=_DECISION_COLUMNS, records=rows)
        return decisions

    def _produced(self, o: gate.Output, command_partition: int) -> Produced:
        if o.topic == gate.ORDERS:
            # The command's own partition number: lane order kept, and orders partition
            # p is the gate's output over commands partition p.
            return (o.topic, command_partition, o.key, o.value)
        # As the default partitioner would place the key, so every producer of the topic
        # (the settler's outbox too) puts one load's or participant's events together.
        return (o.topic, (murmur2(o.key) & 0x7FFFFFFF) % self.settlement_partitions, o.key, o.value)

    # -- the Kafka transaction --------------------------------------------------------------

    async def commit(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer,
                     batch: Batch, decided: Decided) -> float:  # fmt: skip
        """The batch's records, dead letters and offsets in one transaction; the seconds
        the commit call took. Raises TransactionAborted (consumer rewound) on failure."""

        async def send() -> list[asyncio.Future]:
            # Queued without waiting; commit_in_transaction checks every future.
            return [
                await producer.send(self.topics[topic], value, key=key, partition=partition)
                for topic, partition, key, value in decided.records
            ]

        return await commit_in_transaction(consumer, producer, batch, send, group_id=self.group_id,
                                           dlq_topic=self.dlq, source=SOURCE)  # fmt: skip

    def _on_commit(self, batch: Batch, decided: Decided, commit_s: float) -> None:
        m, k = self.metrics, self.kafka_metrics
        m.gate_transactions.labels("committed").inc()
        for (outcome, reason), n in decided.outcomes.items():
            m.gate_decisions.labels(outcome, reason).inc(n)
        m.gate_resent.inc(decided.resent)
        m.gate_duplicates.inc(decided.duplicates)
        m.gate_batch_commands.observe(len(batch))
        m.gate_batch_seconds.observe(time.perf_counter() - batch.fetched_at_s)
        m.gate_commit_seconds.observe(commit_s)
        for topic, *_ in decided.records:
            k.produced.labels(self.topics[topic]).inc()
        count_dead(k, batch.dead, self.dlq)
        for tp, offset in batch.offsets.items():
            self.committed[tp.partition] = offset

    # -- start -------------------------------------------------------------------------------

    async def _read_partition_counts(self) -> None:
        """Owned partitions and the settlement topic's count, from the broker's metadata
        (an idempotent producer only for that: the transactional id needs the set)."""
        probe = make_producer(self.settings.kafka_bootstrap, client_id="settlement-gate-meta")
        await probe.start()
        try:
            n_commands = len(await probe.partitions_for(self.commands))
            n_orders = len(await probe.partitions_for(self.topics[gate.ORDERS]))
            self.settlement_partitions = len(
                await probe.partitions_for(self.topics[gate.SETTLEMENT])
            )
        finally:
            await stop_client(probe)
        if n_commands != n_orders:
            raise RuntimeError(f"{self.commands} has {n_commands} partitions and orders {n_orders}: "
                               "the gate writes commands partition p to orders partition p")  # fmt: skip
        self.owned = self.settings.owned_partitions(n_commands)

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        for p in self.owned:
            tp = TopicPartition(self.commands, p)
            lso = consumer.last_stable_offset(tp)
            if lso is not None:
                self.metrics.gate_lag.labels(str(p)).set(max(0, lso - await consumer.position(tp)))

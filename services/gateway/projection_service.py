"""The projector's adapter: consumes market, settlement, insurance and shipments and
writes the read models (migrations/0002_read_models.sql) through the pure fold
(services.gateway.projector).

Per fetched batch, ONE PostgreSQL transaction: first the parked events whose rows now
exist, then the batch's event ids into `projected_event` (those already there are
skipped: a redelivery changes nothing), then each new event's changes in partition
order. Only after that commit are poison records dead-lettered and the offsets
committed, so a crash in between replays a batch whose effects the ids make no-ops.

The consumer is group-managed in its own group (every gateway instance joins it and
takes a share of the partitions); read_committed, auto-commit off (services.common.kafka).
A rebalance that makes the offset commit fail costs a replay, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.envelope import encode
from services.common.kafka import commit_consumed, fetch_batch, make_consumer
from services.common.kafka_transactions import rewind
from services.common.metrics import KafkaMetrics
from services.gateway import projector as p
from services.gateway.projection_writes import BatchWrites

log = logging.getLogger(__name__)

TOPICS = ("market", "settlement", "insurance", "shipments")
SOURCE = "gateway"

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass(frozen=True, slots=True)
class ProjectionMetrics:
    lag_seconds: Histogram
    events: Counter  # labels: outcome
    consumer_lag: Gauge  # labels: topic


@cache
def projection_metrics(registry: CollectorRegistry = REGISTRY) -> ProjectionMetrics:
    return ProjectionMetrics(
        lag_seconds=Histogram(
            "wlex_gateway_projection_lag_seconds",
            "Staleness of the read models: now minus the event's ts, when it is applied.",
            buckets=LAG_BUCKETS,
            registry=registry,
        ),
        events=Counter(
            "wlex_gateway_projection_events_total",
            "Events seen by the projector, by outcome (applied, duplicate, parked, unparked,"
            " dropped).",
            ["outcome"],
            registry=registry,
        ),
        consumer_lag=Gauge(
            "wlex_gateway_projection_consumer_lag_messages",
            "Records of the projected topics not yet consumed by this instance, by topic.",
            ["topic"],
            registry=registry,
        ),
    )


# ---------------------------------------------------------------------------- SQL

# Parked events whose row now exists, oldest first. The set-based statements of a
# batch are in projection_writes.py.
_UNPARKABLE = (
    "SELECT event_id, kind, subject, envelope FROM projection_parked pp WHERE"
    " (kind IN ('load', 'ref') AND EXISTS (SELECT 1 FROM load WHERE load_id = pp.subject))"
    " OR (kind IN ('offer', 'ref') AND EXISTS (SELECT 1 FROM offer WHERE offer_id = pp.subject))"
    " OR (kind = 'ref' AND EXISTS (SELECT 1 FROM bid WHERE bid_id = pp.subject))"
    " ORDER BY ts_ms, event_id LIMIT $1"
)
_PARKED_OF = (
    "SELECT event_id, kind, subject, envelope FROM projection_parked"
    " WHERE subject = ANY($1::text[])"
    " ORDER BY ts_ms, event_id LIMIT $2"
)
_PARK = (
    "INSERT INTO projection_parked (event_id, kind, subject, ts_ms, envelope)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])"
    " ON CONFLICT DO NOTHING"
)
# Beyond this many distinct parked subjects the projector stops keeping them in memory
# and finds unparkable events with _UNPARKABLE, a scan of every parked row.
PARKED_SUBJECTS_MAX = 100_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Projector:
    """Applies batches of envelopes to the read models (the DB half of the service;
    the Kafka half is ProjectionService). Usable on its own in tests.

    Parked events: `subjects` counts the parked rows of each (kind, subject), as read
    at start() and at each sweep and kept up to date as this projector parks and
    unparks. A batch then asks once which of those subjects now exist (one index
    probe per subject) instead of probing the row of every parked event (_UNPARKABLE,
    the fallback beyond PARKED_SUBJECTS_MAX subjects): in the fan-out benchmark 40,000
    events on 3,000 loads the gateway never saw were parked, and the scan of them
    before every batch was most of PostgreSQL's work.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        on_applied: Callable[[set[str]], None] | None = None,
        metrics: ProjectionMetrics | None = None,
        parked_batch_max: int = 1000,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.pool = pool
        self.on_applied = on_applied
        self.metrics = metrics or projection_metrics()
        self.parked_batch_max = parked_batch_max
        self.clock_ms = clock_ms
        self.parked = 0  # rows in projection_parked as far as we know; checked at start
        # (kind, subject) -> parked rows; None: too many to keep, scan the table.
        self.subjects: dict[tuple[str, str], int] | None = {}
        # The same counts by subject alone, over every kind: what a new event must not
        # overtake between two checks (apply(unpark=False)).
        self._waiting: dict[str, int] = {}
        self.statements = 0  # of the last apply(), for tests and the benchmark

    async def start(self) -> None:
        await self._count_parked(self.pool)

    async def _count_parked(self, conn) -> None:
        rows = await conn.fetch(
            "SELECT kind, subject, count(*) FROM projection_parked GROUP BY kind, subject LIMIT $1",
            PARKED_SUBJECTS_MAX + 1,
        )
        self._waiting = {}
        if len(rows) > PARKED_SUBJECTS_MAX:
            self.subjects = None
            self.parked = await conn.fetchval("SELECT count(*) FROM projection_parked")
        else:
            self.subjects = {(k, s): n for k, s, n in rows}
            self.parked = sum(self.subjects.values())
            for (_, subject), n in self.subjects.items():
                self._waiting[subject] = self._waiting.get(subject, 0) + n

    async def apply(self, envelopes: list[dict[str, Any]], unpark: bool = True) -> set[str]:
        """One transaction: parked events whose rows now exist, then envelopes (those
        not projected before). Returns the ids of the loads whose logs grew.

        unpark=False skips the first part (the check costs a statement over every
        parked subject, which with thousands parked was a fifth of the gateway's CPU
        if done for every batch). An envelope that needs a subject with parked events
        is then parked behind them, even if its rows exist: applied before them, it
        would overtake them. With too many subjects to keep (subjects is None) the
        check always runs."""
        unpark = unpark or self.subjects is None
        outcomes: dict[str, int] = {}
        lags: list[float] = []
        parked: list[tuple[str, str, str, int, str]] = []
        unparked: list[tuple[str, str]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            writes = BatchWrites(conn)
            if self.parked and unpark:
                await self._unpark(conn, writes, unparked)
            new: set[str] = set()
            if envelopes:
                writes.statements += 1
                new = {
                    r[0]
                    for r in await conn.fetch(
                        "INSERT INTO projected_event (event_id) SELECT unnest($1::text[])"
                        " ON CONFLICT DO NOTHING RETURNING event_id",
                        [e["id"] for e in envelopes],
                    )
                }
            folds: list[tuple[dict[str, Any], p.Fold]] = []
            for env in envelopes:
                if env["id"] not in new:
                    outcomes["duplicate"] = outcomes.get("duplicate", 0) + 1
                    continue
                new.discard(env["id"])  # the same id twice in one batch applies once
                fold = p.fold(env)
                if not fold.changes:
                    outcomes["ignored"] = outcomes.get("ignored", 0) + 1
                    continue
                folds.append((env, fold))
            await writes.learn(need for _, fold in folds for need in fold.needs)
            waiting = self._waiting if self.parked and not unpark else {}
            for env, fold in folds:
                behind = next((n for n in fold.needs if n[1] in waiting), None)
                if behind is not None or not writes.needs_met(fold):
                    kind, subject = behind or fold.needs[0]
                    parked.append((env["id"], kind, subject, env["ts"], encode(env).decode()))
                    continue
                await writes.apply(env, fold)
                outcomes["applied"] = outcomes.get("applied", 0) + 1
                lags.append(env["ts"])
            if parked:
                writes.statements += 1
                await conn.execute(_PARK, *(list(column) for column in zip(*parked, strict=True)))
            touched = await writes.finish()
        # Committed: now the counts of parked rows move.
        self.statements = writes.statements
        self._count(unparked, -1)
        self._count([(kind, subject) for _, kind, subject, _, _ in parked], +1)
        if parked:
            outcomes["parked"] = len(parked)
        if unparked:
            outcomes["unparked"] = len(unparked)
        now = self.clock_ms()
        for ts in lags:
            self.metrics.lag_seconds.observe(max(0, now - ts) / 1000)
        for outcome, n in outcomes.items():
            self.metrics.events.labels(outcome).inc(n)
        if touched and self.on_applied is not None:
            self.on_applied(touched)
        return touched

    def _count(self, subjects: list[tuple[str, str]], delta: int) -> None:
        self.parked = max(0, self.parked + delta * len(subjects))
        if self.subjects is None:
            return
        for key in subjects:
            n = self.subjects.get(key, 0) + delta
            if n > 0:
                self.subjects[key] = n
            else:
                self.subjects.pop(key, None)
            n = self._waiting.get(key[1], 0) + delta
            if n > 0:
                self._waiting[key[1]] = n
            else:
                self._waiting.pop(key[1], None)
        if len(self.subjects) > PARKED_SUBJECTS_MAX:
            self.subjects = None
            self._waiting = {}

    async def _unpark(
        self, conn: asyncpg.Connection, writes: BatchWrites, unparked: list[tuple[str, str]]
    ) -> None:
        """Applies the parked events whose rows now exist, oldest first (up to
        parked_batch_max), through writes; their (kind, subject) go to unparked."""
        if self.subjects is None:
            writes.statements += 1
            rows = await conn.fetch(_UNPARKABLE, self.parked_batch_max)
        else:
            await writes.learn(self.subjects)
            ready = [s for k, s in self.subjects if writes.exists(k, s)]
            if not ready:
                return
            writes.statements += 1
            rows = await conn.fetch(_PARKED_OF, ready, self.parked_batch_max)
        folded = []
        for event_id, kind, subject, envelope in rows:
            env = orjson.loads(envelope)
            folded.append((event_id, (kind, subject), env, p.fold(env)))
        await writes.learn(need for *_, fold in folded for need in fold.needs)
        done = []
        for event_id, parked_as, env, fold in folded:
            if not writes.needs_met(fold):  # e.g. a ref that is an offer's, now a bid's
                continue
            await writes.apply(env, fold)
            done.append(event_id)
            unparked.append(parked_as)
        if done:
            writes.statements += 1
            await conn.execute(
                "DELETE FROM projection_parked WHERE event_id = ANY($1::text[])", done
            )

    async def sweep(
        self, parked_ttl_s: float, projected_ttl_s: float, rows_max: int = 10_000
    ) -> None:
        """Drops parked events whose row never came (not this gateway's loads) and
        event ids older than any redelivery."""
        dropped = await self.pool.execute(
            "DELETE FROM projection_parked WHERE parked_at < now() - $1 * interval '1 second'",
            float(parked_ttl_s),
        )
        n = int(dropped.split()[-1])
        if n:
            log.info("dropped %d parked events whose load or offer never appeared", n)
            self.metrics.events.labels("dropped").inc(n)
        await self._count_parked(self.pool)
        await self.pool.execute(
            "DELETE FROM projected_event WHERE ctid = ANY(ARRAY(SELECT ctid FROM projected_event"
            " WHERE projected_at < now() - $1 * interval '1 second' LIMIT $2))",
            float(projected_ttl_s),
            rows_max,
        )


class ProjectionService:
    """The consumer loop: fetch a batch, Projector.apply it, dead-letter its poison
    records and commit its offsets; until stop is set."""

    def __init__(
        self,
        projector: Projector,
        bootstrap: str,
        topics: list[str],
        *,
        group_id: str,
        producer: AIOKafkaProducer,
        dlq_topic: str,
        batch_max: int = 500,
        parked_retry_s: float = 0.5,
        parked_ttl_s: float = 600.0,
        projected_ttl_s: float = 7 * 24 * 3600.0,
        sweep_every_s: float = 60.0,
        kafka_metrics: KafkaMetrics | None = None,
    ) -> None:
        self.projector = projector
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.producer = producer
        self.dlq_topic = dlq_topic
        self.batch_max = batch_max
        self.parked_retry_s = parked_retry_s
        self.parked_ttl_s = parked_ttl_s
        self.projected_ttl_s = projected_ttl_s
        self.sweep_every_s = sweep_every_s
        self.kafka_metrics = kafka_metrics

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(
            self.bootstrap,
            group_id=self.group_id,
            topics=self.topics,
            client_id="gateway-projection",
        )
        await self.projector.start()
        await consumer.start()
        try:
            await self._loop(consumer, stop)
        finally:
            await consumer.stop()

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_unpark = last_sweep = last_lag = loop.time()
        backoff_s = 0.0
        while not stop.is_set():
            if backoff_s:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff_s):
                        await stop.wait()
                if stop.is_set():
                    return
            batch = await fetch_batch(
                consumer, max_records=self.batch_max, timeout_ms=100, metrics=self.kafka_metrics
            )
            now = loop.time()
            # Parked events are looked at every parked_retry_s, not at every batch.
            unpark_due = bool(self.projector.parked) and now - last_unpark >= self.parked_retry_s
            if len(batch) or unpark_due:
                try:
                    await self.projector.apply(batch.messages, unpark=unpark_due)
                except Exception:
                    # The database failed the batch: nothing of it is kept. Put the
                    # consumer back on it (getmany has moved past, aiokafka #1046) and
                    # try again after a pause that grows to 5 s.
                    log.exception("projecting a batch of %d records failed", len(batch))
                    rewind(consumer, batch)
                    backoff_s = min(5.0, max(0.2, backoff_s * 2))
                    continue
                backoff_s = 0.0
                if unpark_due:
                    last_unpark = now
                if len(batch):
                    try:
                        await commit_consumed(
                            consumer, self.producer, batch, group_id=self.group_id,
                            dlq_topic=self.dlq_topic, source=SOURCE, metrics=self.kafka_metrics,
                        )  # fmt: skip
                    except (CommitFailedError, KafkaError) as exc:
                        # A rebalance took the partitions: the next owner replays from
                        # the last commit, and the event ids make the replay a no-op.
                        log.warning("offset commit failed (%r); the batch will replay", exc)
            if now - last_lag >= 1.0:
                last_lag = now
                await self._publish_consumer_lag(consumer)
            if now - last_sweep >= self.sweep_every_s:
                last_sweep = now
                try:
                    await self.projector.sweep(self.parked_ttl_s, self.projected_ttl_s)
                except Exception:  # the next round tries again
                    log.exception("projection sweep failed")

    async def _publish_consumer_lag(self, consumer: AIOKafkaConsumer) -> None:
        per_topic: dict[str, int] = {}
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)
            if end is None:
                end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await consumer.position(tp)
            except Exception:  # a partition revoked under us: next second
                continue
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, end - position)
        for topic, lag in per_topic.items():
            self.projector.metrics.consumer_lag.labels(topic).set(lag)

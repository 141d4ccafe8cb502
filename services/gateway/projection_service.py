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
from collections.abc import Callable, Iterable
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
from services.gateway import lifecycle as lc
from services.gateway import projector as p

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

_LOAD_STATUS = (
    "UPDATE load SET status = $2, reject_reason = COALESCE($3, reject_reason), status_ms = $4"
    " WHERE load_id = $1 AND status = ANY($5::text[])"
)
_REF_STATUS = (
    "WITH l AS (UPDATE load SET status = $2, status_ms = $5"
    "  WHERE load_id = $1 AND $2::text IS NOT NULL AND status = ANY($6::text[])),"
    " o AS (UPDATE offer SET status = $3, status_ms = $5"
    "  WHERE offer_id = $1 AND $3::text IS NOT NULL)"
    " UPDATE bid SET status = $4 WHERE bid_id = $1 AND $4::text IS NOT NULL AND status = 'live'"
)
_COMMAND_REJECTED = (
    "WITH l AS (UPDATE load SET status = 'rejected', reject_reason = $3, status_ms = $4"
    "  WHERE load_id = $1 AND command_id = $2 AND status = ANY($5::text[]))"
    " UPDATE offer SET status = 'rejected', reject_reason = $3, status_ms = $4"
    " WHERE offer_id = $1 AND command_id = $2 AND status = 'requested'"
)
# A consolidating offer keeps resting while both remainders stay above zero (DESIGN);
# any other offer is done after its first deal. offer.rested, when it follows, states
# the engine's own remainders.
_DEAL = (
    "WITH d AS (INSERT INTO deal (deal_id, load_id, shipper_id, carrier_id, offer_id, bid_id,"
    "  price_fen, made_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    "  ON CONFLICT (deal_id) DO UPDATE SET shipper_id = COALESCE(deal.shipper_id, EXCLUDED.shipper_id),"
    "  carrier_id = COALESCE(deal.carrier_id, EXCLUDED.carrier_id),"
    "  offer_id = COALESCE(deal.offer_id, EXCLUDED.offer_id), bid_id = COALESCE(deal.bid_id, EXCLUDED.bid_id),"
    "  price_fen = COALESCE(deal.price_fen, EXCLUDED.price_fen), made_ms = COALESCE(deal.made_ms, EXCLUDED.made_ms)),"
    " b AS (UPDATE bid SET status = 'won' WHERE bid_id = $6)"
    " UPDATE offer o SET deals = o.deals + 1, status_ms = $8,"
    "  remaining_kg = COALESCE(o.remaining_kg, (o.data->>'capacity_kg')::bigint) - (l.data->>'weight_kg')::bigint,"
    "  remaining_dm3 = COALESCE(o.remaining_dm3, (o.data->>'capacity_dm3')::bigint) - (l.data->>'volume_dm3')::bigint,"
    "  status = CASE WHEN NOT (o.data->>'consolidate')::boolean"
    "   OR COALESCE(o.remaining_kg, (o.data->>'capacity_kg')::bigint) - (l.data->>'weight_kg')::bigint <= 0"
    "   OR COALESCE(o.remaining_dm3, (o.data->>'capacity_dm3')::bigint) - (l.data->>'volume_dm3')::bigint <= 0"
    "   THEN 'dealt' ELSE o.status END"
    " FROM load l WHERE o.offer_id = $5 AND l.load_id = $2"
)  # fmt: skip
_BID = (
    "INSERT INTO bid (bid_id, load_id, carrier_id, price_fen, placed_ms, status)"
    " VALUES ($1, $2, $3, $4, $5, 'live') ON CONFLICT (bid_id) DO NOTHING"
)
_OFFER_RESTED = (
    "UPDATE offer SET status = 'open', remaining_kg = $2, remaining_dm3 = $3, status_ms = $4"
    " WHERE offer_id = $1"
)
# The load a log entry belongs to: the load itself, a bid's load, or the load whose
# post or cancel was the refused command. Taking the next seq locks the load's row.
_LOG = (
    "WITH s AS (UPDATE load SET last_seq = last_seq + 1 WHERE load_id = COALESCE("
    "  (SELECT load_id FROM load WHERE load_id = $1),"
    "  (SELECT load_id FROM bid WHERE bid_id = $1),"
    "  (SELECT load_id FROM load WHERE command_id = $2 LIMIT 1),"
    "  (SELECT load_id FROM load WHERE cancel_command_id = $2 LIMIT 1))"
    " RETURNING load_id, last_seq)"
    " INSERT INTO load_event (load_id, seq, event_id, type, ts_ms, envelope)"
    " SELECT load_id, last_seq, $3, $4, $5, $6 FROM s RETURNING load_id"
)
_NEEDS = {
    p.LOAD: "SELECT EXISTS (SELECT 1 FROM load WHERE load_id = $1)",
    p.OFFER: "SELECT EXISTS (SELECT 1 FROM offer WHERE offer_id = $1)",
    p.REF: "SELECT EXISTS (SELECT 1 FROM load WHERE load_id = $1)"
    " OR EXISTS (SELECT 1 FROM offer WHERE offer_id = $1)"
    " OR EXISTS (SELECT 1 FROM bid WHERE bid_id = $1)",
}
_UNPARKABLE = (
    "SELECT event_id, envelope FROM projection_parked pp WHERE"
    " (kind IN ('load', 'ref') AND EXISTS (SELECT 1 FROM load WHERE load_id = pp.subject))"
    " OR (kind IN ('offer', 'ref') AND EXISTS (SELECT 1 FROM offer WHERE offer_id = pp.subject))"
    " OR (kind = 'ref' AND EXISTS (SELECT 1 FROM bid WHERE bid_id = pp.subject))"
    " ORDER BY ts_ms, event_id LIMIT $1"
)


def _deal_facts_sql(columns: Iterable[str]) -> str:
    cols = list(columns)
    for c in cols:  # names go into SQL text: only the fold's known columns
        if c not in p.DEAL_COLUMNS:
            raise ValueError(f"unknown deal column {c!r}")
    names = ", ".join(["deal_id", "load_id", *cols])
    values = ", ".join(f"${i}" for i in range(1, len(cols) + 3))
    sets = ", ".join(f"{c} = COALESCE(deal.{c}, EXCLUDED.{c})" for c in cols)
    return (
        f"INSERT INTO deal ({names}) VALUES ({values}) ON CONFLICT (deal_id) DO UPDATE SET {sets}"
    )


# ---------------------------------------------------------------------------- applying


async def apply_event(conn: asyncpg.Connection, env: dict[str, Any], fold: p.Fold) -> str | None:
    """Runs the changes of one event in the caller's transaction; returns the id of the
    load whose log it joined, if any."""
    ts = env["ts"]
    logged: str | None = None
    for c in fold.changes:
        if isinstance(c, p.LoadStatus):
            await conn.execute(
                _LOAD_STATUS, c.load_id, c.status, c.reason, ts, lc.replaceable_by(c.status)
            )
        elif isinstance(c, p.Log):
            logged = await conn.fetchval(
                _LOG, c.load_id or c.ref_id, c.cause, env["id"], env["type"], ts, encode(env).decode()
            )  # fmt: skip
        elif isinstance(c, p.DealFacts):
            names = [k for k, _ in c.columns]
            await conn.execute(
                _deal_facts_sql(names), c.deal_id, c.load_id, *(v for _, v in c.columns)
            )
        elif isinstance(c, p.RefStatus):
            replaceable = lc.replaceable_by(c.load) if c.load else []
            await conn.execute(_REF_STATUS, c.ref_id, c.load, c.offer, c.bid, ts, replaceable)
        elif isinstance(c, p.CommandRejected):
            await conn.execute(
                _COMMAND_REJECTED, c.ref_id, c.cause, c.reason, ts, lc.replaceable_by(lc.REJECTED)
            )
        elif isinstance(c, p.Deal):
            await conn.execute(
                _DEAL, c.deal_id, c.load_id, c.shipper_id, c.carrier_id, c.offer_id, c.bid_id,
                c.price_fen, c.made_ms,
            )  # fmt: skip
        elif isinstance(c, p.BidPlaced):
            await conn.execute(_BID, c.bid_id, c.load_id, c.carrier_id, c.price_fen, c.placed_ms)
        elif isinstance(c, p.OfferRested):
            await conn.execute(_OFFER_RESTED, c.offer_id, c.remaining_kg, c.remaining_dm3, ts)
        else:  # pragma: no cover - the fold and this adapter are changed together
            raise TypeError(f"unknown change {c!r}")
    return logged


async def _needs_met(conn: asyncpg.Connection, fold: p.Fold) -> bool:
    for kind, subject in fold.needs:
        if not await conn.fetchval(_NEEDS[kind], subject):
            return False
    return True


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Projector:
    """Applies batches of envelopes to the read models (the DB half of the service;
    the Kafka half is ProjectionService). Usable on its own in tests."""

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

    async def start(self) -> None:
        self.parked = await self.pool.fetchval("SELECT count(*) FROM projection_parked")

    async def apply(self, envelopes: list[dict[str, Any]]) -> set[str]:
        """One transaction: parked events whose rows now exist, then envelopes (those
        not projected before). Returns the ids of the loads whose logs grew."""
        touched: set[str] = set()
        outcomes: dict[str, int] = {}
        lags: list[float] = []
        async with self.pool.acquire() as conn, conn.transaction():
            if self.parked:
                await self._unpark(conn, touched, outcomes)
            new: set[str] = set()
            if envelopes:
                new = {
                    r[0]
                    for r in await conn.fetch(
                        "INSERT INTO projected_event (event_id) SELECT unnest($1::text[])"
                        " ON CONFLICT DO NOTHING RETURNING event_id",
                        [e["id"] for e in envelopes],
                    )
                }
            for env in envelopes:
                if env["id"] not in new:
                    outcomes["duplicate"] = outcomes.get("duplicate", 0) + 1
                    continue
                new.discard(env["id"])  # the same id twice in one batch applies once
                fold = p.fold(env)
                if not fold.changes:
                    outcomes["ignored"] = outcomes.get("ignored", 0) + 1
                    continue
                if not await _needs_met(conn, fold):
                    kind, subject = fold.needs[0]
                    await conn.execute(
                        "INSERT INTO projection_parked (event_id, kind, subject, ts_ms, envelope)"
                        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        env["id"], kind, subject, env["ts"], encode(env).decode(),
                    )  # fmt: skip
                    self.parked += 1
                    outcomes["parked"] = outcomes.get("parked", 0) + 1
                    continue
                load_id = await apply_event(conn, env, fold)
                if load_id is not None:
                    touched.add(load_id)
                outcomes["applied"] = outcomes.get("applied", 0) + 1
                lags.append(env["ts"])
        now = self.clock_ms()
        for ts in lags:
            self.metrics.lag_seconds.observe(max(0, now - ts) / 1000)
        for outcome, n in outcomes.items():
            self.metrics.events.labels(outcome).inc(n)
        if touched and self.on_applied is not None:
            self.on_applied(touched)
        return touched

    async def _unpark(self, conn: asyncpg.Connection, touched: set[str], outcomes: dict) -> None:
        rows = await conn.fetch(_UNPARKABLE, self.parked_batch_max)
        done = []
        for row in rows:
            env = orjson.loads(row["envelope"])
            fold = p.fold(env)
            if not await _needs_met(conn, fold):  # e.g. a ref that is an offer's, now a bid's
                continue
            load_id = await apply_event(conn, env, fold)
            if load_id is not None:
                touched.add(load_id)
            done.append(row["event_id"])
        if done:
            await conn.execute(
                "DELETE FROM projection_parked WHERE event_id = ANY($1::text[])", done
            )
            self.parked = max(0, self.parked - len(done))
            outcomes["unparked"] = len(done)

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
        self.parked = await self.pool.fetchval("SELECT count(*) FROM projection_parked")
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
            unpark_due = self.projector.parked and now - last_unpark >= self.parked_retry_s
            if len(batch) or unpark_due:
                try:
                    await self.projector.apply(batch.messages)
                except Exception:
                    # The database failed the batch: nothing of it is kept. Put the
                    # consumer back on it (getmany has moved past, aiokafka #1046) and
                    # try again after a pause that grows to 5 s.
                    log.exception("projecting a batch of %d records failed", len(batch))
                    rewind(consumer, batch)
                    backoff_s = min(5.0, max(0.2, backoff_s * 2))
                    continue
                backoff_s = 0.0
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

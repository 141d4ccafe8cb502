"""The transactional outbox: a service writes the messages it must publish into an
outbox table in the same PostgreSQL transaction as the change they report, and a relay
sends them to Kafka afterwards (DESIGN "Exactly-once effect").

An outbox table has the columns
    seq bigserial PRIMARY KEY, topic text NOT NULL (a DESIGN topic's short name),
    key text, value bytea NOT NULL (an encoded envelope), sent_ms bigint
and `OutboxRelay` sends the unsent rows in seq order with the house producer (acks=all,
idempotent), waits for the broker's acknowledgement of all of them, then marks them sent.

Delivery is at least once with stable bytes: a crash after the broker took a row and
before it was marked sends the same envelope (same id) again, and every consumer of our
topics deduplicates by event id. One relay works a table at a time (a transaction-level
advisory lock on the table's name), so rows leave in seq order even with several
instances of the service running.
"""

from __future__ import annotations

import asyncio
import logging
import zlib

import asyncpg
from aiokafka import AIOKafkaProducer

from services.common.metrics import KafkaMetrics

log = logging.getLogger(__name__)


async def add(
    conn: asyncpg.Connection, table: str, rows: list[tuple[str, str | None, bytes]]
) -> None:
    """Queue (topic short name, key, value) rows, inside the caller's transaction."""
    if rows:
        await conn.copy_records_to_table(table, records=rows, columns=("topic", "key", "value"))


class OutboxRelay:
    """Sends a table's unsent rows to Kafka: `run(stop)` until stop is set."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        table: str,
        producer: AIOKafkaProducer,
        topic_prefix: str,
        *,
        batch_max: int = 1000,
        idle_s: float = 0.05,
        metrics: KafkaMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.table = table
        self.producer = producer
        self.topic_prefix = topic_prefix
        self.batch_max = batch_max
        self.idle_s = idle_s  # a poll, not a notification: bounded delay, no extra connection
        self.metrics = metrics
        self.lock_key = zlib.crc32(f"outbox:{table}".encode())

    async def relay_once(self) -> int:
        """Send and mark up to batch_max rows; the number sent (0 when another relay
        holds the table or nothing waits)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self.lock_key):
                return 0
            rows = await conn.fetch(
                f"SELECT seq, topic, key, value FROM {self.table} WHERE sent_ms IS NULL"
                " ORDER BY seq LIMIT $1",
                self.batch_max,
            )
            if not rows:
                return 0
            futures = []
            for r in rows:
                key = r["key"].encode() if r["key"] is not None else None
                topic = self.topic_prefix + r["topic"]
                futures.append(await self.producer.send(topic, r["value"], key=key))
            await asyncio.gather(*futures)
            await conn.execute(
                f"UPDATE {self.table} SET sent_ms = (extract(epoch FROM now()) * 1000)::bigint"
                " WHERE seq = ANY($1::bigint[])",
                [r["seq"] for r in rows],
            )
        if self.metrics is not None:
            for r in rows:
                self.metrics.produced.labels(self.topic_prefix + r["topic"]).inc()
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until stop is set; a failed round (broker or database away) is logged
        and tried again after a pause, its rows still unsent."""
        pause = self.idle_s
        while not stop.is_set():
            try:
                sent = await self.relay_once()
                pause = self.idle_s
            except Exception:  # retried: the rows stay unsent until the broker has them
                log.exception("outbox %s: relay failed; retrying", self.table)
                sent, pause = 0, min(5.0, pause * 2 + 0.1)
            if sent == 0:
                try:
                    await asyncio.wait_for(stop.wait(), pause)
                except TimeoutError:
                    pass

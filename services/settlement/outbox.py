"""The settler's outbox relay: settler_outbox rows to the `settlement` topic.

The settler writes each settlement event into settler_outbox in the transaction that
moves the money (settler_service.py); this relay sends the unsent rows in seq order with
the house producer (acks=all, idempotent), waits for the broker's acknowledgement of
every one, then marks them sent (services.common.outbox.OutboxRelay does the rounds).

Delivery is at least once with stable ids: a crash after the broker took a row and
before it was marked sends the same bytes again, with the same event id (`<cause id>:0`),
and consumers of `settlement` deduplicate by id. Order per key (a load) holds: rows of a
load are written in its order, sent in seq order, and the idempotent producer keeps a
partition's order across its retries. One relay works the table at a time (the common
relay's advisory lock), so several settlement instances may each run one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from services.common.kafka import make_producer
from services.common.metrics import kafka_metrics
from services.common.outbox import OutboxRelay
from services.common.runner import ServiceContext
from services.settlement.config import SettlementSettings
from services.settlement.metrics import SettlementMetrics, settlement_metrics
from services.settlement.settler_service import OUTBOX_TABLE

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 5.0


class SettlementOutboxRelay:
    """`await SettlementOutboxRelay(settings, pool, metrics).run(ctx)` until ctx.stop.

    A poll every settings.outbox_poll_interval_s while the table is empty (not
    LISTEN/NOTIFY: no extra connection held, and the delay is bounded by the poll)."""

    def __init__(
        self,
        settings: SettlementSettings,
        pool: asyncpg.Pool,
        metrics: SettlementMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics or settlement_metrics()
        self.ready = asyncio.Event()

    async def run(self, ctx: ServiceContext) -> None:
        s = self.settings
        producer = make_producer(s.kafka_bootstrap, client_id="settlement-outbox")
        await producer.start()
        gauge = asyncio.create_task(self._gauge(ctx.stop), name="outbox gauge")
        try:
            relay = OutboxRelay(
                self.pool,
                OUTBOX_TABLE,
                producer,
                s.topic_prefix,
                batch_max=s.outbox_batch_max,
                idle_s=s.outbox_poll_interval_s,
                metrics=kafka_metrics("settlement"),
            )
            self.ready.set()
            await relay.run(ctx.stop)
        finally:
            gauge.cancel()
            with contextlib.suppress(BaseException):
                await gauge
            await producer.stop()

    async def unsent(self) -> int:
        return await self.pool.fetchval(
            f"SELECT count(*) FROM {OUTBOX_TABLE} WHERE sent_ms IS NULL"
        )

    async def _gauge(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.metrics.outbox_unsent.set(await self.unsent())
            except Exception:  # the gauge must not take the relay down; the next round tries
                log.warning("outbox gauge: count failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GAUGE_INTERVAL_S):
                    await stop.wait()

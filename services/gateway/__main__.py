"""`python -m services.gateway`: the REST API on settings.http_port, with /metrics and
/healthz, under the service runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.common import db
from services.common.kafka import make_producer
from services.common.metrics import kafka_metrics
from services.common.outbox import OutboxRelay
from services.common.runner import ServiceContext, run_service
from services.gateway import registry
from services.gateway.app import create_app
from services.gateway.config import GatewayConfig
from services.gateway.deps import CommandSink, Deps
from services.gateway.hub import Hub, StreamConfig
from services.gateway.projection_service import TOPICS as PROJECTED_TOPICS
from services.gateway.projection_service import ProjectionService, Projector
from services.gateway.settlement_client import SettlementClient

log = logging.getLogger("services.gateway")

SWEEP_EVERY_S = 60.0
STREAM = StreamConfig()

_app = None


def http_app(ctx: ServiceContext):
    # Served from the start, so /healthz answers "starting" while main connects; the
    # API answers 503 until main sets app.state.deps.
    global _app
    _app = create_app(None, ctx.checks)
    return _app


async def main(ctx: ServiceContext) -> None:
    config = GatewayConfig()
    # No session reset at each release: the gateway leaves no session state (only
    # transaction-level advisory locks), and the reset was a round trip per statement.
    pool = await ctx.open_pool(
        schema=config.db_schema, max_size=config.db_pool_max, reset_session=False
    )
    await db.migrate(pool, "gateway")
    producer = make_producer(ctx.settings.kafka_bootstrap, client_id="gateway")
    await producer.start()
    ctx.on_shutdown(producer.stop, name="stop kafka producer")
    topic = ctx.settings.topic("commands")

    async def kafka_check() -> None:
        if not await producer.partitions_for(topic):
            raise RuntimeError(f"no partitions for {topic}")

    ctx.checks.add("kafka", kafka_check)
    settlement = SettlementClient(config.settlement_url, config.settlement_timeout_s)
    ctx.on_shutdown(settlement.close, name="close settlement client")
    deps = Deps(
        pool=pool,
        commands=CommandSink(producer, topic, config.produce_timeout_s, kafka_metrics("gateway")),
        config=config,
        settlement=settlement,
        shipments=CommandSink(
            producer,
            ctx.settings.topic("shipments"),
            config.produce_timeout_s,
            kafka_metrics("gateway"),
        ),
    )
    _app.state.deps = deps
    # participant.register / participant.suspend, written with the participant's row.
    relay = OutboxRelay(pool, registry.OUTBOX, producer, ctx.settings.topic_prefix,
                        metrics=kafka_metrics("gateway"))  # fmt: skip
    relay_task = asyncio.create_task(relay.run(ctx.stop), name="gateway outbox relay")
    ctx.on_shutdown(lambda: _finish(relay_task), name="stop outbox relay")
    # The read models (projection_service.py): market, settlement, insurance, shipments.
    projection = ProjectionService(
        Projector(pool, on_applied=deps.load_log.notify),
        ctx.settings.kafka_bootstrap,
        [ctx.settings.topic(t) for t in PROJECTED_TOPICS],
        # Prefixed like every group of the house: deployments sharing a broker never
        # share a group (a shared one would rebalance across unrelated topics).
        group_id=ctx.settings.topic_prefix + config.projection_group,
        producer=producer,
        dlq_topic=ctx.settings.topic("dlq"),
        batch_max=config.projection_batch_max,
        parked_ttl_s=config.projection_parked_ttl_s,
        kafka_metrics=kafka_metrics("gateway"),
    )
    projection_task = asyncio.create_task(projection.run(ctx.stop), name="gateway projection")
    ctx.on_shutdown(lambda: _finish(projection_task), name="stop projection")

    async def projection_check() -> None:
        # A dead projector leaves every status stale: not ready.
        if projection_task.done():
            raise RuntimeError("the read-model projector stopped")

    ctx.checks.add("projection", projection_check)
    # /v1/stream: one consumer of `market` for every WebSocket of this process.
    hub = Hub(ctx.settings.kafka_bootstrap, ctx.settings.topic("market"), pool, STREAM)
    await hub.start()
    ctx.on_shutdown(hub.stop, name="stop market consumer")
    hub_task = asyncio.create_task(hub.run(ctx.stop), name="gateway stream hub")
    ctx.on_shutdown(lambda: _finish(hub_task), name="stop stream hub")
    _app.state.hub = hub
    ctx.mark_ready()
    log.info("gateway ready: commands to %s, schema %s", topic, config.db_schema)
    while not await ctx.sleep_unless_stopped(SWEEP_EVERY_S):
        try:
            swept = await deps.idempotency.sweep()
            if swept:
                log.info("swept %d expired idempotency keys", swept)
        except Exception:  # the next round tries again
            log.exception("idempotency sweep failed")


async def _finish(task: asyncio.Task) -> None:
    # The relay returns once ctx.stop is set; cancel only if it is stuck on the broker.
    try:
        await asyncio.wait_for(asyncio.shield(task), 3.0)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


if __name__ == "__main__":
    # Every stream socket is a connection: room for them beside the REST clients.
    run_service(main, name="gateway", http_app=http_app,
                http_connections_max=STREAM.connections_max + 256)  # fmt: skip

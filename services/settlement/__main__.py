"""`python -m services.settlement [--instance I --of N]`: the settlement service.

One process runs the three parts of settlement over one PostgreSQL pool:
- the funding gate (gate_service.py): `commands` -> holds, decisions -> `orders`;
- the settler (settler_service.py): `market` and `shipments` -> the ledger, inbox, outbox;
- the outbox relay (outbox.py): the settler's outbox -> `settlement`;
- on instance 0, the invariant audit (audit.py): the ledger's invariants checked every
  `ledger_check_interval_s`, for the gauge wlex_settlement_invariant_violations;
and serves, beside /metrics and /healthz, the read API (read_api.py) the gateway asks
for balances and statements. /healthz turns ready when all three loops run; when one of
them fails the process exits (non-zero) and its supervisor restarts it, which is safe at
any moment: every part resumes from what PostgreSQL and Kafka recorded.
"""

from __future__ import annotations

import asyncio
import logging

from services.common.observability import router as observability_router
from services.common.runner import ServiceContext, instance_settings, run_service
from services.settlement import read_api, store
from services.settlement.audit import InvariantAudit
from services.settlement.config import SettlementSettings
from services.settlement.gate_service import FundingGate
from services.settlement.metrics import settlement_metrics
from services.settlement.outbox import SettlementOutboxRelay
from services.settlement.settler_service import SettlerService

log = logging.getLogger("services.settlement")

POOL_MAX = 8  # gate, settler and relay hold one each per batch; the rest serve reads

_app = None


def http_app(ctx: ServiceContext):
    from fastapi import FastAPI

    global _app
    _app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    _app.include_router(observability_router(ctx.checks))
    read_api.install(_app)
    return _app


async def main(ctx: ServiceContext) -> None:
    settings: SettlementSettings = ctx.settings  # type: ignore[assignment]
    # No session reset at each release (one round trip less per batch): the gate, the
    # settler, the relays and the read API leave no session state behind (SET LOCAL and
    # transaction-level advisory locks only; db.create_pool lists what would break it).
    pool = await ctx.open_pool(schema=settings.db_schema, max_size=POOL_MAX,
                               reset_session=False)  # fmt: skip
    await store.migrate(pool)
    _app.state.pool = pool
    metrics = settlement_metrics()
    gate = FundingGate(settings, pool, metrics)
    settler = SettlerService(settings, pool, metrics)
    relay = SettlementOutboxRelay(settings, pool, metrics)
    tasks = [
        asyncio.create_task(gate.run_until(ctx.stop), name="funding gate"),
        asyncio.create_task(settler.run(ctx), name="settler"),
        asyncio.create_task(relay.run(ctx), name="outbox relay"),
    ]
    # Not among the parts whose end ends the service: the audit watches, it may stop early
    # (turned off) and never fails.
    audit = asyncio.create_task(InvariantAudit(settings, pool, metrics).run(ctx),
                                name="invariant audit")  # fmt: skip
    readiness = asyncio.create_task(_ready_when(ctx, gate.ready, settler.ready, relay.ready))
    try:
        # The first part to end (a failure, or a stop) ends the service: the others
        # are told to stop and given the shutdown time to finish their batch.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        ctx.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        readiness.cancel()
        for task in (*tasks, audit):
            task.cancel()


async def _ready_when(ctx: ServiceContext, *events: asyncio.Event) -> None:
    for event in events:
        await event.wait()
    ctx.mark_ready()
    log.info("settlement ready: gate, settler and outbox relay running")


if __name__ == "__main__":
    run_service(main, name="settlement", settings=SettlementSettings(**instance_settings("settlement")),
                http_app=http_app)  # fmt: skip

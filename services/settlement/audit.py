"""The ledger's invariants, checked by the running service: what feeds the gauge
wlex_settlement_invariant_violations{invariant} that operators alert on.

`wlex ledger check` answers a person once; this loop answers Prometheus all the time. It
runs check.check_database with the settler's hooks over one repeatable-read snapshot
soon after the service starts and then every `ledger_check_interval_s`, sets the gauge
of every invariant (zeros included), counts each round by outcome and logs the report
of a broken one. The gate and the settler change the ledger, their rows and their
outboxes in one transaction per batch, so any snapshot is a state the invariants must
hold in, and a violation seen live is real.

The check reads every transfer, so it is a periodic job (60 s by default; 0 turns it
off) run by instance 0 only: the ledger is one for all instances. A round that fails
(PostgreSQL restarting, say) is counted as an error and the next round tries again; the
audit never takes the service down.
"""

from __future__ import annotations

import logging
import time

import asyncpg

from services.common.runner import ServiceContext
from services.settlement import check
from services.settlement.config import SettlementSettings
from services.settlement.metrics import SettlementMetrics, settlement_metrics

log = logging.getLogger(__name__)

FIRST_CHECK_DELAY_S = 1.0  # after start: the gauge is there within seconds, not a minute

OK, BROKEN, ERROR = "ok", "broken", "error"


class InvariantAudit:
    """`await InvariantAudit(settings, pool, metrics).run(ctx)` until ctx.stop is set."""

    def __init__(
        self,
        settings: SettlementSettings,
        pool: asyncpg.Pool,
        metrics: SettlementMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics or settlement_metrics()

    @property
    def enabled(self) -> bool:
        s = self.settings
        return s.ledger_check_interval_s > 0 and s.settlement_instance == 0

    async def run(self, ctx: ServiceContext) -> None:
        if not self.enabled:
            return
        delay = min(FIRST_CHECK_DELAY_S, self.settings.ledger_check_interval_s)
        while not await ctx.sleep_unless_stopped(delay):
            await self.check_once()
            delay = self.settings.ledger_check_interval_s

    async def check_once(self) -> check.Report | None:
        """One round: the report, or None when the check could not run."""
        m = self.metrics
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn:
                report = await check.check_database(conn, check.settler_hooks())
        except Exception:  # the next round tries again; the counter shows the failure
            log.warning("ledger invariant check failed to run", exc_info=True)
            m.invariant_checks.labels(ERROR).inc()
            return None
        m.invariant_check_seconds.observe(time.perf_counter() - started)
        check.publish(report, m.registry)
        if report.ok:
            m.invariant_checks.labels(OK).inc()
        else:
            m.invariant_checks.labels(BROKEN).inc()
            log.error("ledger invariants broken:\n%s", report.to_text())
        return report

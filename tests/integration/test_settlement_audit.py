"""The settlement service's invariant audit (services/settlement/audit.py) over the real
PostgreSQL: the gauge wlex_settlement_invariant_violations carries every invariant, zeros
included, turns non-zero when a row is corrupted behind the ledger's back and back to
zero when it is mended; a round that cannot run is counted, not raised."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from services.common.observability import HealthChecks
from services.common.runner import ServiceContext
from services.settlement import check as C
from services.settlement import postings as P
from services.settlement.audit import InvariantAudit
from services.settlement.config import SettlementSettings
from services.settlement.metrics import settlement_metrics
from services.settlement.store import LedgerStore
from tests.conftest import schema_pool

pytestmark = pytest.mark.integration

ALL = C.LEDGER_INVARIANTS + tuple(n for h in C.settler_hooks() for n in h.names)
CORRUPT = "UPDATE accounts SET credits_posted_fen = credits_posted_fen + $1 WHERE id = 'cash:S1'"


def sample(registry: CollectorRegistry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def violations(registry: CollectorRegistry) -> dict[str, float | None]:
    name = "wlex_settlement_invariant_violations"
    return {n: registry.get_sample_value(name, {"invariant": n}) for n in ALL}


async def test_the_audit_publishes_every_invariant_and_sees_a_corrupted_row(database_url):
    registry = CollectorRegistry()
    metrics = settlement_metrics(registry)
    checks = "wlex_settlement_invariant_checks_total"
    async with schema_pool(database_url, max_size=2) as (schema, pool):
        store = LedgerStore(pool)
        await store.migrate()
        await store.open_accounts(P.platform_accounts() + P.participant_accounts("S1"))
        assert set(await store.apply(P.deposit("d1", "S1", 1_000, "B-1"))) == {"ok"}
        settings = SettlementSettings(db_schema=schema, ledger_check_interval_s=0.05)
        audit = InvariantAudit(settings, pool, metrics)

        # run(): a first round soon after the start, then one every interval.
        ctx = ServiceContext(settings, HealthChecks())
        task = asyncio.create_task(audit.run(ctx))
        await asyncio.sleep(1.0)
        ctx.stop.set()
        await asyncio.wait_for(task, 10)
        assert sample(registry, checks, outcome="ok") >= 2
        assert violations(registry) == dict.fromkeys(ALL, 0.0)

        await pool.execute(CORRUPT, 7)  # money from nowhere
        report = await audit.check_once()
        assert report is not None and not report.ok
        assert sample(registry, checks, outcome="broken") == 1
        assert {n for n, v in violations(registry).items() if v} == {
            C.DEBITS_EQUAL_CREDITS, C.BALANCES_MATCH_TRANSFERS}  # fmt: skip

        await pool.execute(CORRUPT, -7)
        assert (await audit.check_once()).ok
        assert violations(registry) == dict.fromkeys(ALL, 0.0)
        assert sample(registry, "wlex_settlement_invariant_check_seconds_count") == sample(
            registry, checks, outcome="ok") + 1  # fmt: skip


async def test_a_round_that_cannot_run_is_counted_and_only_instance_0_audits(database_url):
    registry = CollectorRegistry()
    metrics = settlement_metrics(registry)
    # A schema without the ledger's tables: the check's first query fails.
    async with schema_pool(database_url, max_size=1) as (schema, pool):
        settings = SettlementSettings(db_schema=schema, ledger_check_interval_s=60)
        audit = InvariantAudit(settings, pool, metrics)
        assert audit.enabled
        assert await audit.check_once() is None
        assert sample(registry, "wlex_settlement_invariant_checks_total", outcome="error") == 1
    second = SettlementSettings(settlement_instance=1, settlement_instances=2)
    assert not InvariantAudit(second, pool, metrics).enabled
    assert not InvariantAudit(SettlementSettings(ledger_check_interval_s=0), pool, metrics).enabled
    # Turned off, run() returns at once instead of waiting for the stop.
    ctx = ServiceContext(second, HealthChecks())
    await asyncio.wait_for(InvariantAudit(second, pool, metrics).run(ctx), 1)

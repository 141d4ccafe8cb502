"""A participant's statement from the real ledger tables: its cash account's transfers in
recorded order, paged by seq, through the cash-only indexes of 0005_hot_updates.sql."""

from __future__ import annotations

import pytest

from services.common import db
from services.settlement import postings as P
from services.settlement import statement
from services.settlement.store import LedgerStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(database_url, pg_schema):
    p = await db.create_pool(database_url, schema=pg_schema, max_size=2)
    store = LedgerStore(p)
    await store.migrate()
    accounts = P.platform_accounts() + P.participant_accounts("S1") + P.participant_accounts("C1")
    await store.open_accounts(accounts)
    # S1: deposit, hold, re-size, delivery (payout to C1, fee); C1 only the payout.
    for batch in (
        P.deposit("d1", "S1", 1_000_000, "d1"),
        P.hold("post-L1", "S1", 400_000),
        P.resize_hold("deal-L1", "post-L1:hold", "S1", 300_000),
        P.settle("pod-L1", "deal-L1:hold", "C1", 300_000, 6_000),
    ):
        assert set(await store.apply(batch)) == {"ok"}
    yield p
    await db.close_pool(p)


async def test_a_statement_lists_the_cash_accounts_transfers_in_order_and_pages(pool):
    lines = await statement.lines(pool, "S1", 0, 100)
    assert [(x["transfer_id"], x["side"]) for x in lines] == [
        (P.bank_transfer_id("S1", "d1", "deposit"), "credit"),
        ("post-L1:hold", "debit"),
        ("deal-L1:resize", "debit"),
        ("deal-L1:hold", "debit"),
        ("pod-L1:post", "debit"),
    ]
    assert [x["seq"] for x in lines] == sorted(x["seq"] for x in lines)
    carrier = await statement.lines(pool, "C1", 0, 100)
    assert [(x["transfer_id"], x["side"], x["amount_fen"]) for x in carrier] == [
        ("pod-L1:payout", "credit", 294_000)
    ]
    # Paged: after the second line, two more (limit + 1 tells the caller there are more).
    page = await statement.lines(pool, "S1", lines[1]["seq"], 2)
    assert [x["transfer_id"] for x in page] == [x["transfer_id"] for x in lines[2:5]]
    assert await statement.lines(pool, "nobody", 0, 100) == []


async def test_the_statement_query_can_use_the_cash_indexes_even_in_a_generic_plan(pool):
    sql = statement.LINES_SQL
    async with pool.acquire() as conn:
        # A generic plan is what a prepared statement settles on after five runs; with
        # sequential scans priced out, a plan that cannot use the partial indexes would
        # still scan the table.
        await conn.execute("SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE lines_q (text, bigint, bigint) AS {sql}")
        explain = "EXPLAIN EXECUTE lines_q('cash:S1', 0, 101)"
        plan = "\n".join(r[0] for r in await conn.fetch(explain))
    assert "transfers_cash_debit_seq" in plan and "transfers_cash_credit_seq" in plan, plan
    assert "Seq Scan" not in plan, plan

"""Group commit of the gateway's statements (services/gateway/groupcommit.py) against the
real PostgreSQL, and the Idempotency-Key rules when many requests share a group."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from services.common import db
from services.gateway.groupcommit import GroupCommit
from tests.integration import test_gateway_support as support
from tests.integration.test_gateway_support import market_load

gateway = support.gateway  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def table(database_url, pg_schema):
    pool = await db.create_pool(database_url, schema=pg_schema, max_size=2)
    await pool.execute("CREATE TABLE item (k text PRIMARY KEY, v integer NOT NULL CHECK (v > 0))")
    try:
        yield pool
    finally:
        await db.close_pool(pool)


INSERT = "INSERT INTO item VALUES ($1, $2) ON CONFLICT (k) DO NOTHING RETURNING k"
INSERT_SET = (
    "INSERT INTO item SELECT * FROM unnest($1::text[], $2::integer[])"
    " ON CONFLICT (k) DO NOTHING RETURNING k"
)


@pytest.mark.parametrize("sql, set_based", [(INSERT, False), (INSERT_SET, True)])
async def test_concurrent_runs_share_groups_and_each_gets_its_own_row(table, sql, set_based):
    group = GroupCommit(table, sql, lambda row: row["k"], set_based=set_based)
    keys = [f"k{i}" for i in range(200)]
    rows = await asyncio.gather(*(group.run((k, 1), k) for k in keys))
    assert [r["k"] for r in rows] == keys
    assert await table.fetchval("SELECT count(*) FROM item") == 200
    # Already there: the statement returns no row, and the caller learns it.
    assert await group.run(("k7", 1), "k7") is None


async def test_the_same_key_twice_never_shares_a_group(table):
    group = GroupCommit(table, INSERT, lambda row: row["k"])
    first, second = await asyncio.gather(group.run(("a", 1), "a"), group.run(("a", 2), "a"))
    # One inserted the row, the other found it there: never both, never an error.
    assert (first is None) != (second is None)
    assert await table.fetchval("SELECT v FROM item WHERE k = 'a'") == (1 if first else 2)


@pytest.mark.parametrize("sql, set_based", [(INSERT, False), (INSERT_SET, True)])
async def test_one_bad_item_fails_alone_and_its_group_is_written(table, sql, set_based):
    group = GroupCommit(table, sql, lambda row: row["k"], set_based=set_based)
    results = await asyncio.gather(
        *(group.run((f"k{i}", 0 if i == 3 else 1), f"k{i}") for i in range(8)),
        return_exceptions=True,
    )
    assert isinstance(results[3], asyncpg.CheckViolationError)
    assert [r["k"] for i, r in enumerate(results) if i != 3] == [
        f"k{i}" for i in range(8) if i != 3
    ]
    assert await table.fetchval("SELECT count(*) FROM item") == 7


async def test_a_statement_timeout_fails_the_whole_group_at_once(database_url, pg_schema):
    # Not about one request's data: each request alone would wait out the timeout again.
    pool = await db.create_pool(database_url, schema=pg_schema, max_size=2,
                                statement_timeout_ms=300)  # fmt: skip
    try:
        group = GroupCommit(pool, "SELECT $1::text AS k FROM pg_sleep($2)", lambda r: r["k"])
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(group.run((f"k{i}", 5.0), f"k{i}") for i in range(6)), return_exceptions=True
        )
        elapsed = loop.time() - started
    finally:
        await db.close_pool(pool)
    assert all(isinstance(r, asyncpg.QueryCanceledError) for r in results), results
    assert elapsed < 1.5  # one timeout (0.3 s), not one per request (1.8 s)


async def test_concurrent_posts_with_one_key_make_one_load(gateway):
    # Claims made in the same group: one request owns the key, the others get 409 while
    # it is in flight or its answer once done, and the exchange gets one command.
    _, key = await gateway.participant("shipper")
    body = market_load()
    idem = str(uuid.uuid4())
    answers = await asyncio.gather(
        *(gateway.post("/v1/loads", key, body, idem=idem) for _ in range(8))
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(202) >= 1 and set(statuses) <= {202, 409}, statuses
    first = [r for r in answers if r.status_code == 202 and "idempotent-replayed" not in r.headers]
    assert len(first) == 1
    assert all(r.content == first[0].content for r in answers if r.status_code == 202)
    assert await gateway.count("load") == 1
    assert len(await gateway.commands(until=2, timeout_s=3)) == 1


async def test_concurrent_posts_with_distinct_keys_each_make_a_load(gateway):
    _, key = await gateway.participant("shipper")
    answers = await asyncio.gather(
        *(gateway.post("/v1/loads", key, market_load()) for _ in range(40))
    )
    assert [r.status_code for r in answers] == [202] * 40
    assert len({r.json()["load_id"] for r in answers}) == 40
    assert await gateway.count("load") == 40
    assert await gateway.count("idempotency_key WHERE state = 'done'") == 40

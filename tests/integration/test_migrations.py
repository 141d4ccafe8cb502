"""Migrations against the real PostgreSQL, each test in its own schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from services.common import db

pytestmark = pytest.mark.integration

FIRST = """
CREATE TABLE account (
    account_id text PRIMARY KEY,
    debits_posted_fen bigint NOT NULL DEFAULT 0 CHECK (debits_posted_fen >= 0)
);
CREATE INDEX account_debits ON account (debits_posted_fen);
"""
# Not idempotent on purpose: a second run of it would add a second row.
SECOND = "INSERT INTO account (account_id) VALUES ('platform_fee');"


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


@pytest.fixture
async def pool(database_url, pg_schema):
    p = await db.create_pool(database_url, schema=pg_schema, max_size=2)
    yield p
    await db.close_pool(p)


async def schema_dump(conn: asyncpg.Connection, schema: str) -> dict[str, list]:
    """What the schema is made of: tables, columns, constraints, indexes, and every row
    of wlex_migrations and account."""
    return {
        "columns": await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = $1"
            " ORDER BY table_name, ordinal_position",
            schema,
        ),
        "constraints": await conn.fetch(
            "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1"
            " ORDER BY c.conname",
            schema,
        ),
        "indexes": await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
            schema,
        ),
        "migrations": await conn.fetch(
            "SELECT service, version, name, checksum, applied_at FROM wlex_migrations"
            " ORDER BY service, version"
        ),
        "accounts": await conn.fetch("SELECT * FROM account ORDER BY account_id"),
    }


async def test_applying_twice_changes_nothing(pool, pg_schema, tmp_path):
    files = db.load_migrations(
        write(tmp_path, {"0001_accounts.sql": FIRST, "0002_platform_fee.sql": SECOND})
    )
    assert [m.version for m in await db.migrate(pool, "settlement", files)] == [1, 2]
    async with pool.acquire() as conn:
        before = await schema_dump(conn, pg_schema)

    assert await db.migrate(pool, "settlement", files) == []
    async with pool.acquire() as conn:
        after = await schema_dump(conn, pg_schema)

    assert after == before
    assert [(r["version"], r["name"]) for r in after["migrations"]] == [
        (1, "accounts"),
        (2, "platform_fee"),
    ]
    assert len(after["accounts"]) == 1
    assert after["indexes"]  # the dump does see what the files made


async def test_a_new_file_is_applied_after_the_old_ones(pool, tmp_path):
    d = write(tmp_path, {"0001_accounts.sql": FIRST})
    await db.migrate(pool, "settlement", db.load_migrations(d))
    write(d, {"0002_platform_fee.sql": SECOND})
    applied = await db.migrate(pool, "settlement", db.load_migrations(d))
    assert [m.version for m in applied] == [2]


async def test_an_edited_applied_migration_is_refused(pool, tmp_path):
    d = write(tmp_path, {"0001_accounts.sql": FIRST})
    await db.migrate(pool, "settlement", db.load_migrations(d))

    write(d, {"0001_accounts.sql": FIRST + "\nALTER TABLE account ADD COLUMN note text;\n"})
    write(d, {"0002_platform_fee.sql": SECOND})
    with pytest.raises(db.MigrationError, match="0001_accounts.sql .* edited"):
        await db.migrate(pool, "settlement", db.load_migrations(d))

    # Refused whole: the new file did not run either.
    rows = await pool.fetch("SELECT version FROM wlex_migrations")
    assert [r["version"] for r in rows] == [1]
    assert await pool.fetchval("SELECT count(*) FROM account") == 0


async def test_a_failing_file_leaves_nothing_applied(pool, tmp_path):
    d = write(
        tmp_path,
        {"0001_accounts.sql": FIRST, "0002_broken.sql": "INSERT INTO nowhere VALUES (1);"},
    )
    with pytest.raises(db.MigrationError, match="0002_broken.sql failed"):
        await db.migrate(pool, "settlement", db.load_migrations(d))
    # One transaction: not even the bookkeeping table of this first run remains.
    assert await pool.fetchval("SELECT to_regclass('account')") is None
    assert await pool.fetchval("SELECT to_regclass('wlex_migrations')") is None


async def test_services_keep_separate_histories_in_one_schema(pool, tmp_path):
    a = db.load_migrations(write(tmp_path / "a", {"0001_accounts.sql": FIRST}))
    b = db.load_migrations(write(tmp_path / "b", {"0001_quotes.sql": "CREATE TABLE quote ();"}))
    assert len(await db.migrate(pool, "settlement", a)) == 1
    assert len(await db.migrate(pool, "insurance", b)) == 1
    assert await pool.fetchval("SELECT count(*) FROM wlex_migrations") == 2


async def test_concurrent_migration_by_two_pools_applies_each_file_once(
    database_url, pg_schema, tmp_path
):
    # The first file holds its transaction open a while, so the twin surely arrives while
    # the first is still migrating and has to wait on the advisory lock.
    files = db.load_migrations(
        write(
            tmp_path,
            {
                "0001_accounts.sql": FIRST + "SELECT pg_sleep(0.3);",
                "0002_platform_fee.sql": SECOND,
            },
        )
    )
    pools = [await db.create_pool(database_url, schema=pg_schema, max_size=1) for _ in range(2)]
    try:
        results = await asyncio.gather(*(db.migrate(p, "settlement", files) for p in pools))
        assert sorted(len(r) for r in results) == [0, 2]
        rows = await pools[0].fetch("SELECT version FROM wlex_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2]
        assert await pools[0].fetchval("SELECT count(*) FROM account") == 1
    finally:
        for p in pools:
            await db.close_pool(p)


async def test_pool_sessions_use_the_given_schema(pool, pg_schema):
    assert await pool.fetchval("SELECT current_schema()") == pg_schema

"""Fixtures shared by the whole suite.

Kafka and PostgreSQL are real and started once per test run by the project's own launcher
(services.devenv.stack) in a temporary state directory on free loopback ports, unless
WLEX_KAFKA_BOOTSTRAP / WLEX_DATABASE_URL point at running ones. Unit tests request none
of these fixtures, so `pytest tests/unit` starts nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from services.devenv.stack import Stack, start_isolated


def new_state_dir(name: str) -> Path:
    """A state directory for a test stack, outside pytest's tmp_path: pytest keeps its
    base directory at mode 0700 (and resets it when another pytest run starts), which
    PostgreSQL, running as its own system user when we are root, could not traverse."""
    return Path(tempfile.mkdtemp(prefix=f"wlex-{name}-"))


def start_stack(state_dir: Path, brokers: int = 1, *, external: bool = True) -> Stack:
    """Start a stack of the real broker(s) and PostgreSQL in state_dir on free ports,
    or use WLEX_KAFKA_BOOTSTRAP / WLEX_DATABASE_URL when external and set.
    WLEX_KAFKA_VERSION=3.9.1 runs the suite against another broker line (docs/kafka.md).
    Stop it with stop_stack."""
    return start_isolated(
        state_dir,
        brokers,
        external_kafka=os.environ.get("WLEX_KAFKA_BOOTSTRAP", "") if external else "",
        external_database=os.environ.get("WLEX_DATABASE_URL", "") if external else "",
        log=lambda msg: print(f"[stack] {msg}"),
    )


def stop_stack(stack: Stack) -> None:
    """Stop every process of the stack and delete its state."""
    stack.down()
    shutil.rmtree(stack.state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """One real Kafka broker and one PostgreSQL for the whole run."""
    stack = start_stack(new_state_dir("stack"))
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="session")
def kafka_bootstrap(stack) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def database_url(stack) -> str:
    return stack.database_url


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test alone, so tests never read each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def pg_schema(database_url):
    """A fresh PostgreSQL schema of this test alone, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def schema_pool(database_url: str, **pool_options):
    """(schema, pool): a pool on a fresh schema of its own (db.create_pool makes it),
    closed and the schema dropped afterwards; for a test that needs several."""
    from services.common import db

    schema = f"t_{uuid.uuid4().hex[:12]}"
    pool = await db.create_pool(database_url, schema=schema, **pool_options)
    try:
        yield schema, pool
    finally:
        await db.close_pool(pool)
        await db.drop_schema(database_url, schema)

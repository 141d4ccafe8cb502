"""PostgreSQL for the services that keep tables: the connection pool and the migrations.

Contract:
- `create_pool(database_url, schema=...)` opens a bounded asyncpg pool whose sessions all
  have `search_path = schema`, so a service (or a test) owns one schema and its SQL names
  tables unqualified. The schema is created if missing.
- `migrate(pool, service)` applies the service's migration files that the database has not
  seen, in version order, and records each in `wlex_migrations` of the pool's schema.
  Running it again changes nothing. A recorded file whose text has since changed is refused
  (`MigrationError`): the database would no longer match what the file says it is.

Migration files live in `services/<service>/migrations/` (or any directory given) and are
named `NNNN_what_it_does.sql`: a four-digit version, then a name in lower_snake_case.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

SERVICES_DIR = Path(__file__).resolve().parent.parent

MIGRATIONS_TABLE = "wlex_migrations"

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    """The migration files and the database disagree; nothing was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str  # sha256 hex of the file's bytes


async def create_pool(
    database_url: str,
    *,
    schema: str | None = None,
    application_name: str = "wlex",
    min_size: int = 1,
    max_size: int = 10,
    command_timeout_s: float = 30.0,
    statement_timeout_ms: int = 30_000,
    idle_connection_lifetime_s: float = 300.0,
    reset_session: bool = True,
) -> asyncpg.Pool:
    """A pool of at most `max_size` connections, each with search_path = `schema`.

    `schema` must be a plain lower-case identifier; it is created if it does not exist.
    Without it the database's default search_path applies.

    reset_session=False skips asyncpg's session reset at each release (one more round
    trip of four statements: pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *, RESET ALL),
    for pools whose users never leave session state behind: no session-level advisory
    locks (the xact-level ones end with their transaction), no cursors WITH HOLD, no
    LISTEN, no SET outside a transaction. An open transaction is still rolled back.
    """
    server_settings = {
        # Shows which service holds a connection in pg_stat_activity.
        "application_name": application_name,
        # The server gives up too, so a query the client stopped waiting for does not
        # keep holding locks after command_timeout.
        "statement_timeout": str(statement_timeout_ms),
    }
    if schema is not None:
        _check_schema_name(schema)
        await _ensure_schema(database_url, schema)
        server_settings["search_path"] = schema
    return await asyncpg.create_pool(
        database_url,
        # Bounded: PostgreSQL's max_connections is shared by every instance of every
        # service; a burst queues on the pool instead of exhausting the server.
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout_s,
        max_inactive_connection_lifetime=idle_connection_lifetime_s,
        server_settings=server_settings,
        # None: asyncpg's Connection.reset(); _keep_session: only the rollback that
        # asyncpg runs before calling it.
        reset=None if reset_session else _keep_session,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook that leaves the session as it is (see create_pool)."""


async def close_pool(pool: asyncpg.Pool, timeout_s: float = 5.0) -> None:
    """Close gracefully (waits for released connections), then terminate what remains."""
    try:
        async with asyncio.timeout(timeout_s):
            await pool.close()
    except TimeoutError:
        log.warning("pool did not close within %.1fs; terminating its connections", timeout_s)
        pool.terminate()


def discover(service: str) -> list[Migration]:
    """The migrations of `services/<service>/migrations/`, in version order."""
    return load_migrations(SERVICES_DIR / service / "migrations")


def load_migrations(directory: Path) -> list[Migration]:
    """Every `NNNN_name.sql` of `directory`, in version order.

    A `.sql` file with another name, or two files with one version, is an error rather than
    skipped: a migration that silently never runs is worse than a refusal to start.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE_NAME.match(path.name)
        if m is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        version = int(m["version"])
        if version in found:
            raise MigrationError(f"{path}: version {version:04d} is used twice")
        raw = path.read_bytes()
        found[version] = Migration(
            version=version,
            name=m["name"],
            sql=raw.decode("utf-8"),
            checksum=hashlib.sha256(raw).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def migrate(
    pool: asyncpg.Pool | asyncpg.Connection,
    service: str,
    migrations: list[Migration] | None = None,
    *,
    timeout_s: float = 600.0,
) -> list[Migration]:
    """Apply the pending `migrations` (default: `discover(service)`); return those applied.

    All pending files are applied in one transaction, so a service finds its schema either
    at the old version or the new one, never between. The transaction first takes an
    advisory lock keyed by the schema: a second process migrating the same schema waits,
    then sees the rows the first one committed and applies nothing.

    Statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY, ALTER TYPE ...
    ADD VALUE before PostgreSQL 12) do not belong in these files.

    `timeout_s` replaces the pool's short command and statement timeouts for this call: a
    migration may rewrite a large table, and a twin waits on the lock for that long.
    """
    if migrations is None:
        migrations = discover(service)
    if isinstance(pool, asyncpg.Pool):
        async with pool.acquire() as conn:
            return await _migrate(conn, service, migrations, timeout_s)
    return await _migrate(pool, service, migrations, timeout_s)


async def _migrate(
    conn: asyncpg.Connection, service: str, migrations: list[Migration], timeout_s: float
) -> list[Migration]:
    t = timeout_s
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('statement_timeout', $1, true)", f"{int(t * 1000)}ms", timeout=t
        )
        schema = await conn.fetchval("SELECT current_schema()", timeout=t)
        if schema is None:
            raise MigrationError("no schema to migrate: the search_path names none that exists")
        # Keyed by schema, not service: the migrations table itself is per schema, and its
        # CREATE TABLE IF NOT EXISTS is not safe against a concurrent twin.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"wlex_migrations:{schema}",
            timeout=t,
        )
        await conn.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                service    text        NOT NULL,
                version    integer     NOT NULL,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (service, version)
            )
            """,
            timeout=t,
        )
        rows = await conn.fetch(
            f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} WHERE service = $1",
            service,
            timeout=t,
        )
        applied = {r["version"]: r for r in rows}
        _check_applied(service, schema, migrations, applied)

        done: list[Migration] = []
        for mig in migrations:
            if mig.version in applied:
                continue
            log.info("migrating %s.%s: %04d_%s", schema, service, mig.version, mig.name)
            try:
                # No arguments: the simple query protocol, so a file may hold many statements.
                await conn.execute(mig.sql, timeout=t)
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"{service} {mig.version:04d}_{mig.name}.sql failed: {exc}"
                ) from exc
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (service, version, name, checksum)"
                " VALUES ($1, $2, $3, $4)",
                service,
                mig.version,
                mig.name,
                mig.checksum,
                timeout=t,
            )
            done.append(mig)
        return done


def _check_applied(service: str, schema: str, migrations: list[Migration], applied: dict) -> None:
    """Refuse when an applied file was edited, renamed or removed.

    A recorded version newer than every file we know is tolerated with a warning: it is
    the schema of a newer release, and an older instance of a rolling deploy must still
    start. A recorded version older than that, with no file, means history was rewritten.
    """
    known = {m.version: m for m in migrations}
    latest_known = max(known, default=0)
    for version, row in sorted(applied.items()):
        mig = known.get(version)
        label = f"{service} {version:04d}_{row['name']}.sql in schema {schema}"
        if mig is None:
            if version > latest_known:
                log.warning("%s is applied but unknown to this release (newer?)", label)
                continue
            raise MigrationError(f"{label} is applied but its file is gone")
        if mig.name != row["name"]:
            raise MigrationError(f"{label} is applied but the file is now named {mig.name}")
        if mig.checksum != row["checksum"]:
            raise MigrationError(
                f"{label} was edited after it was applied; add a new migration instead"
            )


async def _ensure_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            # CREATE SCHEMA IF NOT EXISTS still fails with a unique violation when two
            # sessions create the same schema at once; the lock makes the second wait.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"wlex_schema:{schema}",
            )
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


async def drop_schema(database_url: str, schema: str) -> None:
    """Drop `schema` and everything in it, if it exists (tests' and benchmarks' scratch
    schemas; no service drops one)."""
    _check_schema_name(schema)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _check_schema_name(schema: str) -> None:
    # The name goes into SQL text (a schema is an identifier, not a bind parameter).
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r}: lower-case letters, digits and _ only")

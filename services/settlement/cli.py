"""`wlex ledger ...`: the settlement ledger from the command line (services/cli.py mounts
`app` under the name "ledger")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import orjson
import typer

from services.settlement import check as checks
from services.settlement.store import SCHEMA

app = typer.Typer(help="The settlement ledger.", no_args_is_help=True,
                  pretty_exceptions_enable=False)  # fmt: skip


@app.callback()
def ledger() -> None:
    """The settlement ledger: accounts, transfers and their invariants."""


EXIT_BROKEN = 1  # an invariant does not hold
EXIT_UNCHECKED = 2  # no ledger to check (no database, no schema)


def _default_database_url() -> str:
    from services.common.settings import get_settings
    from services.devenv.postgres import PostgresNode

    settings = get_settings()
    return settings.database_url or PostgresNode(settings.postgres_port, Path()).url


@app.command("check")
def check(
    database_url: Annotated[
        str,
        typer.Option(
            help="PostgreSQL to check; default WLEX_DATABASE_URL, else the local runtime's."
        ),
    ] = "",
    schema: Annotated[str, typer.Option(help="The settlement service's schema.")] = SCHEMA,
    json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify the ledger's invariants; exit 1 with a report when one is broken."""
    url = database_url or _default_database_url()
    try:
        report = asyncio.run(_check(url, schema))
    except (OSError, LookupError) as exc:
        typer.echo(f"ledger check: cannot check {schema} at {url}: {exc}", err=True)
        raise typer.Exit(EXIT_UNCHECKED) from exc
    if json:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(report.to_text())
    if not report.ok:
        raise typer.Exit(EXIT_BROKEN)


async def _check(database_url: str, schema: str) -> checks.Report:
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1"
            " AND tablename IN ('accounts', 'transfers')", schema)  # fmt: skip
        if found != 2:
            raise LookupError(f"schema {schema!r} holds no ledger")
        await conn.execute("SELECT set_config('search_path', $1, false)", schema)
        # The settler's invariants too, once its tables (and the gate's load_hold) exist.
        have = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)",
            schema, list(checks.SETTLER_TABLES))  # fmt: skip
        hooks = checks.settler_hooks() if have == len(checks.SETTLER_TABLES) else []
        return await checks.check_database(conn, hooks)
    finally:
        await conn.close()

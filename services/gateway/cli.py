"""`wlex participants ...`: participants and API keys, straight in the gateway's tables.

The first operator has no key to call the API with; this is how it gets one. It talks
to WLEX_DATABASE_URL, or to the local runtime's PostgreSQL when that is unset, and
applies the gateway's migrations first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import orjson
import typer

from services.gateway import auth, registry

app = typer.Typer(help="Participants and their API keys.", no_args_is_help=True)


def _database_url() -> str:
    from services.common.settings import get_settings

    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from services.devenv.stack import Stack, StackConfig

    return Stack(StackConfig.from_settings(settings), log=lambda _: None).database_url


async def _with_conn(work):
    from services.common import db
    from services.gateway.config import GatewayConfig

    pool = await db.create_pool(
        _database_url(), schema=GatewayConfig().db_schema, max_size=1, application_name="wlex-cli"
    )
    try:
        await db.migrate(pool, "gateway")
        async with pool.acquire() as conn:
            return await work(conn)
    finally:
        await db.close_pool(pool)


@app.command("create")
def create(
    role: Annotated[str, typer.Option(help="shipper, carrier, insurer or operator")],
    name: Annotated[str, typer.Option(help="the company's name")],
    json: Annotated[
        bool, typer.Option("--json", help="Print participant and key as JSON.")
    ] = False,
) -> None:
    """Register a participant; print its API key (shown this once, kept only hashed)."""
    if role not in auth.ROLES:
        raise typer.BadParameter(f"--role takes {', '.join(auth.ROLES)}")
    if not 1 <= len(name) <= 200:
        raise typer.BadParameter("--name takes 1 to 200 characters")
    now_ms = time.time_ns() // 1_000_000
    participant, api_key = asyncio.run(_with_conn(lambda c: registry.create(c, role, name, now_ms)))
    if json:
        typer.echo(orjson.dumps({"participant": participant, "api_key": api_key}).decode())
        return
    typer.echo(
        f"{participant['role']} {participant['participant_id']} ({participant['name']});"
        " the key below is shown once",
        err=True,
    )
    typer.echo(api_key)


@app.command("suspend")
def suspend(participant_id: str) -> None:
    """Suspend a participant: its keys answer 401 (within the gateway's auth cache time)."""
    now_ms = time.time_ns() // 1_000_000
    participant = asyncio.run(_with_conn(lambda c: registry.suspend(c, participant_id, now_ms)))
    if participant is None:
        typer.echo(f"no participant {participant_id}", err=True)
        raise typer.Exit(1)
    typer.echo(orjson.dumps(participant).decode())


@app.command("list")
def list_(role: Annotated[str | None, typer.Option()] = None) -> None:
    """Every participant (id, role, status, name), in registration order."""

    async def work(conn):
        out, after = [], None
        for _ in range(10_000):  # bounded: a million participants at most
            rows = await registry.page(conn, role=role, status=None, after=after, limit=100)
            out.extend(rows[:100])
            if len(rows) <= 100:
                return out
            after = rows[99]["participant_id"]
        return out

    for p in asyncio.run(_with_conn(work)):
        typer.echo(f"{p['participant_id']}  {p['role']:<8} {p['status']:<9} {p['name']}")

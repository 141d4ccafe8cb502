"""Participants and their API keys in PostgreSQL (used by the API and the CLI).

Registration and suspension also concern settlement (the funding gate opens the
participant's accounts and refuses a suspended shipper's loads): each writes its
command (participant.register, participant.suspend) to the gateway's outbox in the same
transaction, and the gateway's relay sends it to `commands`, keyed by the participant."""

from __future__ import annotations

import asyncpg

from services.common import envelope, outbox, schemas
from services.common.envelope import new_id
from services.gateway import auth

OUTBOX = "outbox"
SOURCE = "gateway"


async def _announce(conn: asyncpg.Connection, type_: str, data: dict, now_ms: int) -> None:
    command = envelope.make(type_, data, data["participant_id"], SOURCE, now_ms)
    schemas.validate(command)
    await outbox.add(conn, OUTBOX, [("commands", data["participant_id"], envelope.encode(command))])


_COLUMNS = "participant_id, role, name, status, created_ms, suspended_ms"


def as_participant(row: asyncpg.Record) -> dict:
    return {
        "participant_id": row["participant_id"],
        "role": row["role"],
        "name": row["name"],
        "status": row["status"],
        "created_at": row["created_ms"],
        "suspended_at": row["suspended_ms"],
    }


async def create(
    conn: asyncpg.Connection, role: str, name: str, now_ms: int, participant_id: str | None = None
) -> tuple[dict, str]:
    """A new participant and its first API key: (participant, the key, shown once)."""
    if role not in auth.ROLES:
        raise ValueError(f"role must be one of {', '.join(auth.ROLES)}")
    participant_id = participant_id or new_id(now_ms)
    key_id, api_key, digest = auth.new_key()
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO participant (participant_id, role, name, created_ms)"
            f" VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}",
            participant_id, role, name, now_ms,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO api_key (key_id, participant_id, secret_sha256, created_ms)"
            " VALUES ($1, $2, $3, $4)",
            key_id, participant_id, digest, now_ms,
        )  # fmt: skip
        await _announce(conn, "participant.register",
                        {"participant_id": participant_id, "role": role}, now_ms)  # fmt: skip
    return as_participant(row), api_key


async def get(conn: asyncpg.Connection | asyncpg.Pool, participant_id: str) -> dict | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM participant WHERE participant_id = $1", participant_id
    )
    return as_participant(row) if row else None


async def suspend(conn: asyncpg.Connection, participant_id: str, now_ms: int) -> dict | None:
    """Suspends (again: no change, nothing announced); None when there is no such
    participant."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE participant SET status = 'suspended',"
            f" suspended_ms = COALESCE(suspended_ms, $2) WHERE participant_id = $1"
            f" RETURNING {_COLUMNS}, (suspended_ms = $2) AS now_suspended",
            participant_id, now_ms,
        )  # fmt: skip
        if row is not None and row["now_suspended"]:
            await _announce(conn, "participant.suspend", {"participant_id": participant_id}, now_ms)
    return as_participant(row) if row else None


async def page(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    role: str | None,
    status: str | None,
    after: str | None,
    limit: int,
) -> list[dict]:
    """Up to limit + 1 participants in id (creation) order, after the cursor's id."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM participant WHERE ($1::text IS NULL OR role = $1)"
        f" AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR participant_id > $3)"
        f" ORDER BY participant_id LIMIT $4",
        role, status, after, limit + 1,
    )  # fmt: skip
    return [as_participant(r) for r in rows]

"""What a participant may read of its money: the balance of its cash account and its
statement, read from the ledger's tables (settlement owns them; the gateway asks
through settlement's read API, read_api.py)."""

from __future__ import annotations

import asyncpg

from services.settlement.postings import cash_account_id

LIMIT_MAX = 100

# $1 the cash account, $2 the seq to start after, $3 the limit. The literal LIKEs match
# the predicates of the partial indexes of migrations/0005_hot_updates.sql, so that even
# a generic plan (a prepared statement's after five runs) may use them.
LINES_SQL = (
    "SELECT seq, id, kind, code, cause, amount_fen, debit_account_id, state,"
    " (extract(epoch FROM created_at) * 1000)::bigint AS at_ms"
    " FROM transfers WHERE seq > $2 AND ("
    "(debit_account_id = $1 AND debit_account_id LIKE 'cash:%')"
    " OR (credit_account_id = $1 AND credit_account_id LIKE 'cash:%'))"
    " ORDER BY seq LIMIT $3"
)


async def balance(conn: asyncpg.Connection | asyncpg.Pool, participant_id: str) -> dict | None:
    """The cash account's balances in fen, or None when the participant has none yet.

    available = posted credits - posted debits - pending debits (what it may spend or
    withdraw); held = pending debits (its loads' holds, disputed escrow included)."""
    row = await conn.fetchrow(
        "SELECT debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen"
        " FROM accounts WHERE id = $1",
        cash_account_id(participant_id),
    )
    if row is None:
        return None
    dp, dd, cp, cc = row
    return {
        "participant_id": participant_id,
        "available_fen": cc - dd - dp,
        "held_fen": dp,
        "incoming_fen": cp,
        "posted_credits_fen": cc,
        "posted_debits_fen": dd,
    }


async def lines(
    conn: asyncpg.Connection | asyncpg.Pool, participant_id: str, after_seq: int, limit: int
) -> list[dict]:
    """Up to limit + 1 transfers touching the participant's cash account with seq >
    after_seq, in recorded order. `side` is the participant's side of the transfer:
    credit (money in) or debit (money out, or held when the kind is pending); a void
    names the hold it releases (`cause`, `code` say why)."""
    account = cash_account_id(participant_id)
    rows = await conn.fetch(LINES_SQL, account, after_seq, min(limit, LIMIT_MAX) + 1)
    out = []
    for r in rows:
        debit = r["debit_account_id"] == account
        out.append(
            {
                "seq": r["seq"],
                "transfer_id": r["id"],
                "kind": r["kind"],
                "code": r["code"],
                "cause": r["cause"],
                "side": "debit" if debit else "credit",
                "amount_fen": r["amount_fen"],
                "state": r["state"],
                "at_ms": r["at_ms"],
            }
        )
    return out


async def command_outcome(conn: asyncpg.Connection | asyncpg.Pool, command_id: str) -> dict | None:
    """The funding gate's decision on a command ({outcome, reason}: gate.py's outcome
    words), or None while the gate has not decided it."""
    row = await conn.fetchrow(
        "SELECT outcome, reason FROM gate_decisions WHERE command_id = $1", command_id
    )
    return None if row is None else {"outcome": row["outcome"], "reason": row["reason"]}

"""The ledger in PostgreSQL: ledger.py's rules over locked rows, a batch per transaction.

`apply_in(conn, transfers)` applies a batch inside the caller's transaction, so the
settler can record its inbox row in the same one (DESIGN "Exactly-once effect"):
1. lock every account the batch touches, its own and those of the pending transfers it
   resolves, in one statement in id order (two batches that share accounts queue on them
   instead of deadlocking);
2. read the batch's transfer ids and pending transfers, after the locks: whoever changed
   them held the same locks, so what we read is current;
3. run `Ledger.apply` over those rows;
4. write back set-based: one statement updates the accounts (conditional on the version
   each was read at) and the states of the holds resolved, one COPY adds the transfers.
A fixed number of round trips per batch (BEGIN, SET LOCAL, the four above, COMMIT)
whatever its size, which is where the throughput comes from (docs/settlement.md has the
figures). The rules run in Python rather than in SQL because linked chains and
resolutions need the whole batch in order; profiled, most of a batch's time is spent in
PostgreSQL.

Across instances the row locks serialise batches that share an account, the conditional
UPDATE refuses a write over a version it did not read, and the transfers' primary key
refuses an id two instances both thought new: the loser's transaction aborts and
`LedgerStore.apply` runs the batch again, now seeing `exists`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from services.common import db
from services.settlement.ledger import (
    OK,
    PENDING,
    RESOLVING_KINDS,
    Account,
    Ledger,
    Transfer,
)

log = logging.getLogger(__name__)

SERVICE = "settlement"
SCHEMA = "settlement"

_ACCOUNT_COLUMNS = (
    "id, kind, debits_must_not_exceed_credits, credits_must_not_exceed_debits,"
    " debits_pending_fen, debits_posted_fen, credits_pending_fen, credits_posted_fen"
)

# Every statement of a batch looks rows up by key, a few thousand at most, in tables that
# only grow; the planner's own choices went wrong twice, both measured on a batch of
# 2,000 against 60,000-110,000 transfers:
# - prepared statements switch to a generic plan after five runs, and the one chosen for
#   the updates took 2.5 s instead of 0.1 s;
# - with the batch's arrays in view it hash-joined them to a sequential scan of all
#   transfers: 196 ms, growing with the table, where index lookups take a few.
# So, for the rest of the transaction (SET LOCAL), plans are made for the parameters at
# hand and a sequential scan is a last resort. The settler's statements in the same
# transaction (inbox by key) want the same.
PLANNER = "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_seqscan = off"

# Id lists are joined as unnest(...) rather than compared with `= ANY($1)`, which gave
# the worst of the generic plans (a scan comparing each row with the whole array).
_LOCK_ACCOUNTS = f"""
SELECT {_ACCOUNT_COLUMNS}, version FROM accounts
WHERE id IN (
    SELECT unnest($1::text[])
    UNION
    SELECT x.id FROM transfers t JOIN unnest($2::text[]) AS p(id) ON t.id = p.id,
           LATERAL (VALUES (t.debit_account_id), (t.credit_account_id)) AS x(id))
ORDER BY id
FOR UPDATE
"""
_LOCK_MORE_ACCOUNTS = f"""
SELECT {_ACCOUNT_COLUMNS}, version FROM accounts
WHERE id IN (SELECT unnest($1::text[]))
ORDER BY id
FOR UPDATE
"""
_TRANSFER_FIELDS = """t.id, t.kind, t.debit_account_id, t.credit_account_id, t.amount_fen,
       coalesce(t.pending_id, ''), t.code, t.cause, t.linked, t.state"""
_READ_TRANSFERS = f"""
SELECT {_TRANSFER_FIELDS}
FROM unnest($1::text[]) AS w(id) JOIN transfers t ON t.id = w.id
"""
_READ_ALL_TRANSFERS = f"SELECT {_TRANSFER_FIELDS} FROM transfers t ORDER BY t.created_at, t.id"
# The updates of a batch in one statement (one round trip): the accounts, conditional on
# the version read under the lock, and the states of the holds it resolved. The counts
# let the caller see that every row matched. The new transfers follow by COPY: measured,
# a batch of 2,000 took 125-205 ms that way against 260-275 ms inserting them from
# unnest in this same statement.
_UPDATE = """
WITH written_accounts AS (
    UPDATE accounts a
    SET debits_pending_fen = u.dp, debits_posted_fen = u.dpo,
        credits_pending_fen = u.cp, credits_posted_fen = u.cpo, version = a.version + 1
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                $6::bigint[]) AS u(id, dp, dpo, cp, cpo, version)
    WHERE a.id = u.id AND a.version = u.version
    RETURNING 1
), written_states AS (
    UPDATE transfers t SET state = u.state
    FROM unnest($7::text[], $8::text[]) AS u(id, state)
    WHERE t.id = u.id AND t.kind = 'pending'
    RETURNING 1
)
SELECT (SELECT count(*) FROM written_accounts), (SELECT count(*) FROM written_states)
"""
_TRANSFER_COLUMNS = (
    "id", "kind", "debit_account_id", "credit_account_id", "amount_fen", "pending_id",
    "code", "cause", "linked", "state",
)  # fmt: skip

# A batch is bounded by the caller (the settler's poll size); this bounds the retries of
# one whose transaction lost a race, after which the error reaches the caller.
RETRIES_MAX = 5
RETRY_PAUSE_S = 0.01


class LedgerConflict(RuntimeError):
    """An account changed under a batch that held its lock: a bug, or a write that went
    around the store. The transaction is aborted; nothing was applied."""


# Errors after which running the same batch again is right: another transaction won.
RETRYABLE = (
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    LedgerConflict,
)


async def migrate(pool: asyncpg.Pool) -> None:
    await db.migrate(pool, SERVICE)


async def apply_in(
    conn: asyncpg.Connection, transfers: Sequence[Transfer], *, set_planner: bool = True
) -> list[str]:
    """Apply a batch inside the caller's open transaction; one result per transfer.

    Sets the planner for the rest of the transaction (see PLANNER), unless the caller has
    (set_planner=False: one round trip less).

    On any exception the caller must roll back (the batch may be half written); the
    RETRYABLE ones mean the same batch may simply run again.
    """
    if not transfers:
        return []
    account_ids: set[str] = set()
    pending_ids: set[str] = set()
    for t in transfers:
        if t.debit_account_id:
            account_ids.add(t.debit_account_id)
        if t.credit_account_id:
            account_ids.add(t.credit_account_id)
        if t.pending_id:
            pending_ids.add(t.pending_id)
    if set_planner:
        await conn.execute(PLANNER)
    rows = await conn.fetch(_LOCK_ACCOUNTS, sorted(account_ids), list(pending_ids))
    accounts = {r[0]: r for r in rows}

    wanted = {t.id for t in transfers} | pending_ids
    recorded = await conn.fetch(_READ_TRANSFERS, list(wanted))
    # A pending transfer committed between the two statements names accounts we did not
    # lock. Rare; lock them now (out of order: a deadlock is detected and retried).
    missing = {r[i] for r in recorded for i in (2, 3)} - accounts.keys()
    if missing:
        for r in await conn.fetch(_LOCK_MORE_ACCOUNTS, sorted(missing)):
            accounts[r[0]] = r

    ledger = Ledger(
        (Account(*r[:8]) for r in accounts.values()),
        (Transfer(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in recorded),
        {r[0]: r[9] for r in recorded if r[1] == PENDING},
    )
    before = {a.id: a.balances() for a in ledger.accounts.values()}
    known_pending = {r[0] for r in recorded if r[1] == PENDING}
    results = ledger.apply(transfers)

    new_rows = []
    state_changes: dict[str, str] = {}
    states = ledger.pending_states
    for t, result in zip(transfers, results, strict=True):
        if result != OK:
            continue
        rec = ledger.transfers[t.id]
        if rec.kind == PENDING:
            new_rows.append((rec.id, rec.kind, rec.debit_account_id, rec.credit_account_id,
                             rec.amount_fen, None, rec.code, rec.cause, rec.linked, states[rec.id]))  # fmt: skip
        else:
            new_rows.append((rec.id, rec.kind, rec.debit_account_id, rec.credit_account_id,
                             rec.amount_fen, rec.pending_id or None, rec.code, rec.cause,
                             rec.linked, None))  # fmt: skip
            if rec.kind in RESOLVING_KINDS and rec.pending_id in known_pending:
                state_changes[rec.pending_id] = states[rec.pending_id]
    if not new_rows:
        return results

    changed = [a for a in ledger.accounts.values() if a.balances() != before[a.id]]
    counts = await conn.fetchrow(
        _UPDATE,
        [a.id for a in changed],
        [a.debits_pending_fen for a in changed],
        [a.debits_posted_fen for a in changed],
        [a.credits_pending_fen for a in changed],
        [a.credits_posted_fen for a in changed],
        [accounts[a.id][8] for a in changed],
        list(state_changes),
        list(state_changes.values()),
    )
    if tuple(counts) != (len(changed), len(state_changes)):
        raise LedgerConflict(
            f"updated {tuple(counts)} of {len(changed)} accounts and {len(state_changes)} holds"
        )
    await conn.copy_records_to_table("transfers", records=new_rows, columns=_TRANSFER_COLUMNS)
    return results


class LedgerStore:
    """The ledger of one schema, through a pool: each call its own transaction."""

    def __init__(self, pool: asyncpg.Pool, *, retries_max: int = RETRIES_MAX) -> None:
        self.pool = pool
        self.retries_max = retries_max

    async def migrate(self) -> None:
        await migrate(self.pool)

    async def open_accounts(self, accounts: Sequence[Account]) -> list[str]:
        """`ok` for each account opened, `exists` for one already open with the same kind
        and limits, `exists_with_different_fields` otherwise."""
        ledger = Ledger(a for a in await self.accounts([a.id for a in accounts]))
        results = ledger.open_accounts(accounts)
        async with self.pool.acquire() as conn:
            await conn.executemany(
                """INSERT INTO accounts (id, kind, debits_must_not_exceed_credits,
                                         credits_must_not_exceed_debits)
                   VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING""",
                [(a.id, a.kind, a.debits_must_not_exceed_credits,
                  a.credits_must_not_exceed_debits) for a in accounts],
            )  # fmt: skip
        return results

    async def apply(self, transfers: Sequence[Transfer]) -> list[str]:
        """Apply a batch in its own transaction, again if it lost a race (RETRYABLE)."""
        for attempt in range(self.retries_max + 1):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await apply_in(conn, transfers)
            except RETRYABLE as exc:
                if attempt == self.retries_max:
                    raise
                log.info("ledger batch of %d lost a race (%s); again", len(transfers),
                         type(exc).__name__)  # fmt: skip
                await asyncio.sleep(RETRY_PAUSE_S * (attempt + 1))
        raise AssertionError("unreachable")

    async def accounts(self, ids: Sequence[str] | None = None) -> list[Account]:
        sql = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts"
        async with self.pool.acquire() as conn:
            if ids is None:
                rows = await conn.fetch(sql + " ORDER BY id")
            else:
                rows = await conn.fetch(sql + " WHERE id = ANY($1::text[]) ORDER BY id", list(ids))
        return [Account(*r) for r in rows]

    async def load(self) -> Ledger:
        """The whole ledger as one consistent pure state (tests and small books)."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            accounts = await conn.fetch(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts")
            recorded = await conn.fetch(_READ_ALL_TRANSFERS)
        return Ledger(
            (Account(*r) for r in accounts),
            (Transfer(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in recorded),
            {r[0]: r[9] for r in recorded if r[1] == PENDING},
        )

"""Idempotency-Key on every POST (IETF draft-ietf-httpapi-idempotency-key-header).

One row per (participant, key) in PostgreSQL:
- the first request inserts it `in_flight` with a fingerprint of the request and the
  effect it is about to make (`pending`: the exact bytes of the command envelope, with
  its ids and timestamp), and holds it for a lease;
- it makes the effect (produces the command, waits for the broker's ack), then in one
  transaction records what it did (the load row) and the answer (status, headers,
  body), turning the row `done`;
- a request with the same key and the same fingerprint gets the stored answer; with
  another fingerprint 422; while the first is in flight 409;
- an attempt that fails (broker down) gives its lease back at once, and one that
  crashes loses it when the lease runs out: the next retry takes the row over and
  makes the *stored* effect again, so the command it sends has the same command id and
  load id as the first one. The broker may then hold that command twice (if the first
  send did land), never two different loads: the funding gate knows the command id and
  the engine refuses the second load.post as duplicate_id.

Rows expire after a TTL (the client's window to retry) and are swept in bounded batches.
Requests refused before any effect (401, 403, 400, 422 invalid, 429) record nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import orjson
from fastapi.responses import Response

from services.gateway import problems
from services.gateway.groupcommit import GroupCommit

HEADER = "Idempotency-Key"
KEY_CHARS_MAX = 255
REPLAYED_HEADER = "Idempotent-Replayed"
_VISIBLE_ASCII = re.compile(r"[!-~]+")


def parse_header(value: str | None) -> str:
    """The key of an Idempotency-Key header.

    The draft makes it a structured-field string ("..."); a bare token is accepted too,
    since most clients send one. 1-255 visible ASCII characters.
    """
    if value is None or value == "":
        raise problems.ProblemError(
            400, problems.IDEMPOTENCY_KEY_MISSING, "every POST needs an Idempotency-Key header"
        )
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not (1 <= len(key) <= KEY_CHARS_MAX) or not _VISIBLE_ASCII.fullmatch(key):
        raise problems.ProblemError(
            400,
            problems.IDEMPOTENCY_KEY_INVALID,
            f"Idempotency-Key: 1 to {KEY_CHARS_MAX} visible ASCII characters",
        )
    return key


def fingerprint(method: str, path: str, body: object) -> bytes:
    """sha256 of the request: method, path and the JSON body with its keys sorted, so
    whitespace and key order do not make a retry look like another request."""
    h = hashlib.sha256()
    h.update(method.encode() + b" " + path.encode() + b"\n")
    h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return h.digest()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def response(self, replayed: bool = False) -> Response:
        headers = dict(self.headers)
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(self.body, status_code=self.status, headers=headers)


@dataclass(frozen=True, slots=True)
class Attempt:
    """This request owns the key: make `pending` (possibly a crashed attempt's)."""

    participant_id: str
    key: str
    attempt: int
    pending: bytes


# The claims of a group in one statement: one array per column (groupcommit.py).
_CLAIM = (
    "INSERT INTO idempotency_key"
    " (participant_id, idem_key, fingerprint, state, lease_until, expires_at, pending)"
    " SELECT p, k, f, 'in_flight', now() + lease, now() + ttl, pending"
    " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::interval[], $5::interval[],"
    " $6::bytea[]) AS t(p, k, f, lease, ttl, pending)"
    " ON CONFLICT (participant_id, idem_key) DO NOTHING RETURNING participant_id, idem_key"
)
# Kinds of answer statement run in groups (one per route's effect statement); past it
# a statement runs alone. A bound, not a limit we expect to reach.
ANSWER_KINDS_MAX = 32


class IdempotencyStore:
    def __init__(self, pool: asyncpg.Pool, ttl_s: int, lease_s: float) -> None:
        self._pool = pool
        self._ttl = timedelta(seconds=ttl_s)
        self._lease = timedelta(seconds=lease_s)
        # The two statements of every POST, each in a group commit with the same
        # statement of the requests running at the same time (groupcommit.py).
        self._claims = GroupCommit(pool, _CLAIM, lambda row: (row[0], row[1]), set_based=True)
        self._answers: dict[str, GroupCommit] = {}

    async def begin(
        self, participant_id: str, key: str, fp: bytes, pending: bytes
    ) -> Attempt | Answer:
        """Claims the key (Attempt) or gives the stored answer; raises 409 or 422."""
        # The common case, a new key, is one statement, committed with the claims of
        # the requests that arrived with it.
        inserted = await self._claims.run(
            (participant_id, key, fp, self._lease, self._ttl, pending), (participant_id, key)
        )
        if inserted is not None:
            return Attempt(participant_id, key, 1, pending)
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT fingerprint, state, attempt, pending, status, headers::text AS headers,"
                " body, lease_until > now() AS leased, expires_at <= now() AS expired"
                " FROM idempotency_key WHERE participant_id = $1 AND idem_key = $2 FOR UPDATE",
                participant_id, key,
            )  # fmt: skip
            if row is None or row["expired"]:
                # Gone or past its TTL: the key is new again.
                await conn.execute(
                    "INSERT INTO idempotency_key (participant_id, idem_key, fingerprint, state,"
                    " lease_until, expires_at, pending) VALUES ($1, $2, $3, 'in_flight',"
                    " now() + $4::interval, now() + $5::interval, $6)"
                    " ON CONFLICT (participant_id, idem_key) DO UPDATE SET"
                    " fingerprint = $3, state = 'in_flight', attempt = 1,"
                    " lease_until = now() + $4::interval, expires_at = now() + $5::interval,"
                    " pending = $6, status = NULL, headers = NULL, body = NULL",
                    participant_id, key, fp, self._lease, self._ttl, pending,
                )  # fmt: skip
                return Attempt(participant_id, key, 1, pending)
            if bytes(row["fingerprint"]) != fp:
                raise problems.ProblemError(
                    422,
                    problems.IDEMPOTENCY_KEY_REUSED,
                    "this Idempotency-Key was first used with another request",
                )
            if row["state"] == "done":
                return Answer(row["status"], orjson.loads(row["headers"]), bytes(row["body"]))
            if row["leased"]:
                raise problems.ProblemError(
                    409,
                    problems.IDEMPOTENCY_KEY_IN_USE,
                    "the first request with this key is still in flight; retry later",
                    headers={"Retry-After": "1"},
                )
            # The attempt before us failed or crashed: take over its effect, not ours.
            attempt = row["attempt"] + 1
            await conn.execute(
                "UPDATE idempotency_key SET attempt = $3, lease_until = now() + $4::interval"
                " WHERE participant_id = $1 AND idem_key = $2",
                participant_id, key, attempt, self._lease,
            )  # fmt: skip
            return Attempt(participant_id, key, attempt, bytes(row["pending"]))

    async def finish(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        attempt: Attempt,
        answer: Answer,
        effect_sql: str | None = None,
        effect_args: tuple = (),
    ) -> bool:
        """Stores the answer; with effect_sql (one data-modifying statement, its
        parameters $1..$n) in the same statement, so that the effect's rows and the
        answer commit together. Given the store's pool, the statement runs in a group
        commit with the same statement of concurrent requests; given a connection, call
        inside the caller's transaction. False when a later attempt took the key over
        (its answer is the same)."""
        n = len(effect_args)
        sql = (
            f"UPDATE idempotency_key SET state = 'done', status = ${n + 4},"
            f" headers = ${n + 5}::jsonb, body = ${n + 6}, pending = NULL"
            f" WHERE participant_id = ${n + 1} AND idem_key = ${n + 2} AND attempt = ${n + 3}"
            f" AND state = 'in_flight' RETURNING participant_id, idem_key, attempt"
        )
        if effect_sql is not None:
            # A data-modifying WITH runs to completion whether or not the UPDATE reads it.
            sql = f"WITH effect AS ({effect_sql}) {sql}"
        args = (
            *effect_args, attempt.participant_id, attempt.key, attempt.attempt,
            answer.status, orjson.dumps(answer.headers).decode(), answer.body,
        )  # fmt: skip
        group = self._answers.get(sql) if conn is self._pool else None
        if group is None and conn is self._pool and len(self._answers) < ANSWER_KINDS_MAX:
            group = self._answers[sql] = GroupCommit(
                self._pool, sql, lambda row: (row[0], row[1], row[2])
            )
        if group is not None:
            key = (attempt.participant_id, attempt.key, attempt.attempt)
            return await group.run(args, key) is not None
        return await conn.fetchrow(sql, *args) is not None

    async def release(self, attempt: Attempt) -> None:
        """Gives the lease back after a failed attempt, so a retry may take over now."""
        await self._pool.execute(
            "UPDATE idempotency_key SET lease_until = now()"
            " WHERE participant_id = $1 AND idem_key = $2 AND attempt = $3 AND state = 'in_flight'",
            attempt.participant_id, attempt.key, attempt.attempt,
        )  # fmt: skip

    async def sweep(self, rows_max: int = 1000) -> int:
        """Deletes up to rows_max expired keys; returns how many."""
        status = await self._pool.execute(
            "DELETE FROM idempotency_key WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM idempotency_key WHERE expires_at <= now() LIMIT $1))",
            rows_max,
        )
        return int(status.split()[-1])


Perform = Callable[[Attempt], Awaitable[Answer]]


async def run(
    store: IdempotencyStore,
    participant_id: str,
    key: str,
    fp: bytes,
    pending: bytes,
    perform: Perform,
) -> Response:
    """The answer of an idempotent POST: the stored one, or perform()'s.

    perform(attempt) makes attempt.pending's effect and calls store.finish in the
    transaction that records it.
    """
    claimed = await store.begin(participant_id, key, fp, pending)
    if isinstance(claimed, Answer):
        return claimed.response(replayed=True)
    try:
        answer = await perform(claimed)
    except BaseException:
        try:
            await store.release(claimed)
        except Exception:  # the lease runs out by itself
            pass
        raise
    return answer.response()

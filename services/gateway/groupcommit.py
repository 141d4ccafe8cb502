"""Group commit: one statement made for many concurrent requests in one round trip.

A POST writes two short statements (the Idempotency-Key's claim, then its answer with
the load's row), and each alone costs a pool checkout, a round trip, a transaction and
a WAL flush, on the client's and on the server's CPU. Under load many requests wait to
run the same statement at the same moment: GroupCommit runs those that are waiting
together, as one pipelined `fetchmany` on one connection (asyncpg sends every Bind and
Execute, then one Sync): one round trip, one transaction, one commit.

With `set_based=True` the statement takes one array per parameter instead (`unnest($1::
text[], $2::bytea[], ...)`): the group's arguments are passed column by column, and the
server executes one statement for the whole group instead of one per request, which
costs it less per row (the Idempotency-Key claim is written this way).

Contract:
- `await group.run(args, key)` gives the row the statement returned for `args`, or
  None when it returned none (an `INSERT .. ON CONFLICT DO NOTHING` that did nothing).
  The statement must return at most one row per run, and its columns must give back
  `key` through `key_of(row)`: rows are matched to requests by key, never by position.
- It returns once the group's transaction has committed: what the row says is durable.
- Nothing waits for a group to fill: the first request starts one at once, and the
  requests that arrive while `flushes_max` groups are in flight form the next (so at
  low load a request costs what it did alone, and at high load fewer, larger groups).
- Two requests with the same key never share a group (the later one waits for the next
  group), and a group runs its items in key order, so that two groups never wait on each
  other's rows in opposite orders (no deadlock between groups).
- A group is atomic. When it fails on an error the server reports about the statement
  (a constraint, a value, a deadlock), each of its requests is run again alone, so one
  bad request cannot fail its neighbours; a failure of the server or the connection
  (connection lost, shutdown, statement timeout, out of resources) fails every request
  of the group at once, since each would meet it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

import asyncpg

# Failures that are not about one request's data: running the group's requests one by
# one would meet them once per request (a statement timeout 256 times over).
_NOT_THE_DATA = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, statement timeout
    asyncpg.exceptions.InsufficientResourcesError,
)


class GroupCommit:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sql: str,
        key_of: Callable[[asyncpg.Record], Hashable],
        *,
        group_max: int = 256,
        flushes_max: int = 1,
        set_based: bool = False,
    ) -> None:
        self._pool = pool
        self._sql = sql
        self._set_based = set_based
        self._key_of = key_of
        self._group_max = group_max
        self._flushes_max = flushes_max
        self._waiting: list[tuple[Any, tuple, asyncio.Future]] = []
        # Counted by the flushes themselves, which stop counting in the same step as they
        # see nothing waiting: an item is never left behind by a flush that is ending.
        self._flushing = 0
        self._tasks: set[asyncio.Task] = set()  # held: the loop keeps weak references

    async def run(self, args: tuple, key: Hashable) -> asyncpg.Record | None:
        """The statement's row for args (None if it returned none), once committed."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((key, args, future))
        if self._flushing < self._flushes_max:
            self._flushing += 1
            task = asyncio.create_task(self._flush(), name="group commit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A caller that stops waiting cancels only its future: an item already in a group
        # is written all the same, as if the caller had crashed after it.
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                group = self._take()
                try:
                    found = await self._run_group(group)
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, _NOT_THE_DATA):
                        self._fail(group, exc)
                    else:
                        await self._run_alone(group)
                    continue
                except Exception as exc:
                    self._fail(group, exc)
                    continue
                except asyncio.CancelledError:  # the loop is closing
                    for _, _, future in group:
                        future.cancel()
                    raise
                for key, _, future in group:
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            self._flushing -= 1

    @staticmethod
    def _fail(group: list, exc: Exception) -> None:
        for _, _, future in group:
            if not future.done():
                future.set_exception(exc)

    def _take(self) -> list[tuple[Any, tuple, asyncio.Future]]:
        group: dict[Hashable, tuple[Any, tuple, asyncio.Future]] = {}
        later = []
        for item in self._waiting:
            if item[0] in group or len(group) >= self._group_max:
                later.append(item)
            else:
                group[item[0]] = item
        self._waiting = later
        return sorted(group.values(), key=lambda item: item[0])

    async def _run_group(self, group: list) -> dict[Hashable, asyncpg.Record]:
        async with self._pool.acquire() as conn:
            if self._set_based:
                columns = [list(c) for c in zip(*(args for _, args, _ in group), strict=True)]
                rows = await conn.fetch(self._sql, *columns)
            elif len(group) == 1:
                row = await conn.fetchrow(self._sql, *group[0][1])
                rows = [] if row is None else [row]
            else:
                rows = await conn.fetchmany(self._sql, [args for _, args, _ in group])
        return {self._key_of(row): row for row in rows}

    async def _run_alone(self, group: list) -> None:
        for _, args, future in group:
            try:
                if self._set_based:
                    row = await self._pool.fetchrow(self._sql, *([a] for a in args))
                else:
                    row = await self._pool.fetchrow(self._sql, *args)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(row)

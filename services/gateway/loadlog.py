"""The per-load event log as a server-sent event stream (GET /v1/loads/{id}/events).

Each log row is one SSE event: `id:` is the row's per-load sequence number (1, 2, ...),
`event:` the event type, `data:` the envelope as compact JSON (one line). A client that
reconnects with `Last-Event-ID: n` gets every row after n: sequence numbers are given
under the load's row lock and commit in order (0002_read_models.sql), so a row with a
higher number is never visible before a lower one: no gap, no duplicate.

Readers wake when the projector of this process commits rows of their load (Waiters),
and otherwise poll every `poll_s`: the projector may run in another gateway instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg

from services.gateway import lifecycle

ROWS_MAX = 200  # rows read per query; a long log is sent in several reads


class Waiters:
    """Wakes the streams of a load when its log grows (in this process)."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def notify(self, load_ids: set[str]) -> None:
        for load_id in load_ids:
            for event in self._events.get(load_id, ()):
                event.set()

    @contextlib.contextmanager
    def watching(self, load_id: str):
        event = asyncio.Event()
        self._events.setdefault(load_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._events.get(load_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[load_id]

    def __len__(self) -> int:
        return sum(len(v) for v in self._events.values())


def frame(seq: int, type_: str, envelope: str) -> bytes:
    # The envelope is compact JSON: one line, so one data: field.
    return f"id: {seq}\nevent: {type_}\ndata: {envelope}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"


async def stream(
    pool: asyncpg.Pool,
    waiters: Waiters,
    load_id: str,
    after_seq: int,
    *,
    keepalive_s: float,
    max_s: float,
    poll_s: float,
) -> AsyncIterator[bytes]:
    """The SSE body: rows after after_seq as they come, a comment every keepalive_s of
    silence; it ends once the load is final and every row is sent, or after max_s."""
    started = time.monotonic()
    deadline = started + max_s
    quiet_since = started
    last = after_seq
    with waiters.watching(load_id) as woken:
        # A first comment so that the client sees the answer start at once.
        yield b": stream of load " + load_id.encode() + b"\n\n"
        while True:
            woken.clear()
            # Status first, rows second: the final status commits with its log row, so
            # rows read after a final status include every row there will be (bar
            # trailing facts such as hold.released, which a reconnect then gets).
            status = await pool.fetchval("SELECT status FROM load WHERE load_id = $1", load_id)
            rows = await pool.fetch(
                "SELECT seq, type, envelope FROM load_event WHERE load_id = $1 AND seq > $2"
                " ORDER BY seq LIMIT $3",
                load_id, last, ROWS_MAX,
            )  # fmt: skip
            for row in rows:
                yield frame(row["seq"], row["type"], row["envelope"])
                last = row["seq"]
            if rows:
                quiet_since = time.monotonic()
            if len(rows) == ROWS_MAX:
                continue
            if status is None or status in lifecycle.FINAL:
                return
            now = time.monotonic()
            if now >= deadline:
                return
            if now - quiet_since >= keepalive_s:
                yield KEEPALIVE
                quiet_since = now
            wait_s = min(poll_s, deadline - now, quiet_since + keepalive_s - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait_s)):
                    await woken.wait()

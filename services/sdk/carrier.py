"""CarrierClient: the market feed of /v1/stream and the carrier's commands on it.

    async with CarrierClient("http://127.0.0.1:18003", key, lanes=["420100>420600>van-9.6"]) as c:
        async for frame in c.events():          # {"type": "event", "cursor", "event", "load"?}
            if frame["event"]["type"] == "auction.opened":
                ack = await c.bid(frame["event"]["data"]["load_id"], 300000)

The client reconnects by itself when the connection drops (or the gateway drops it as
a slow reader, close 4408) and resumes from the cursor of the last frame it received:
the events it yields have no gap and no duplicate across reconnects. Commands wait for
their ack; one still unanswered when the connection drops is sent again, with the same
client_ref, on the next connection, and the gateway answers it with its first answer
(its Idempotency-Key is the client_ref), so a bid is never placed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger(__name__)

FATAL_CLOSES = {4401: "unauthenticated", 4403: "forbidden"}


class StreamClosed(Exception):
    """The stream ended for good: a refused key (4401), a role that may not (4403), a
    cursor the gateway can no longer serve, too many failed reconnects, or close()."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(f"{reason} (close {code})" if code else reason)
        self.reason = reason
        self.code = code


class CommandError(Exception):
    """The gateway refused a command; problem is the RFC 9457 body (reason, detail)."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(f"{problem.get('reason')}: {problem.get('detail')}")
        self.problem = problem
        self.reason = problem.get("reason")


def stream_url(url: str) -> str:
    """ws(s)://host/v1/stream from an http(s) base URL or a ws URL."""
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    return url if url.rstrip("/").endswith("/v1/stream") else url.rstrip("/") + "/v1/stream"


_END = object()


class CarrierClient:
    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        lanes: list[str] | None = None,
        regions: list[str] | None = None,
        vehicle_classes: list[str] | None = None,
        cursor: str | None = None,
        events_max: int = 10_000,
        reconnects_max: int = 30,
        backoff_max_s: float = 5.0,
        open_timeout_s: float = 10.0,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self.url = stream_url(url)
        self.cursor = cursor  # of the last frame received: where a reconnect resumes
        self.reconnects = 0  # connections after the first, for the curious
        self._key = api_key
        self._subscription = {
            "lanes": lanes,
            "regions": regions,
            "vehicle_classes": vehicle_classes,
        }
        self._events: asyncio.Queue = asyncio.Queue(events_max)
        self._pending: dict[str, tuple[bytes, asyncio.Future]] = {}
        self._ws: ClientConnection | None = None
        self._live = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._fatal: StreamClosed | None = None
        self._reconnects_max = reconnects_max
        self._backoff_max_s = backoff_max_s
        self._open_timeout_s = open_timeout_s
        self._ack_timeout_s = ack_timeout_s

    async def __aenter__(self) -> CarrierClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and subscribe; returns once the gateway streams live (any replay
        since the cursor is queued before that)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="wlex carrier stream")
        live = asyncio.create_task(self._live.wait())
        try:
            await asyncio.wait({live, self._task}, timeout=self._open_timeout_s * 3,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            live.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not self._live.is_set():
            raise TimeoutError("the stream did not open in time")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        self._end(StreamClosed("closed"))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event frame, in order; raises StreamClosed when the stream ends."""
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)  # for any other iterator
                raise self._fatal or StreamClosed("closed")
            yield item

    # ------------------------------------------------------------------ commands

    async def bid(self, load_id: str, price_fen: int, client_ref: str | None = None) -> dict:
        """Place a bid; the ack's result ({bid_id, command_id, load_id, status})."""
        return await self.command(
            {"op": "bid", "load_id": load_id, "price_fen": price_fen}, client_ref
        )

    async def withdraw(self, bid_id: str, client_ref: str | None = None) -> dict:
        return await self.command({"op": "withdraw", "bid_id": bid_id}, client_ref)

    async def offer(self, client_ref: str | None = None, **fields: Any) -> dict:
        """Post a capacity offer (the fields of POST /v1/offers)."""
        return await self.command({"op": "offer", **fields}, client_ref)

    async def cancel_offer(self, offer_id: str, client_ref: str | None = None) -> dict:
        return await self.command({"op": "cancel", "offer_id": offer_id}, client_ref)

    async def command(self, frame: dict[str, Any], client_ref: str | None = None) -> dict:
        """Send frame with client_ref (new if None) and wait for its ack; CommandError
        on an error frame. Unanswered frames are resent after a reconnect."""
        if self._fatal is not None:
            raise self._fatal
        ref = client_ref or uuid.uuid4().hex
        data = orjson.dumps({**frame, "client_ref": ref})
        future = asyncio.get_running_loop().create_future()
        self._pending[ref] = (data, future)
        ws = self._ws
        if ws is not None and self._live.is_set():
            with contextlib.suppress(ConnectionClosed):
                await ws.send(data.decode())
        try:
            return await asyncio.wait_for(future, self._ack_timeout_s)
        finally:
            self._pending.pop(ref, None)

    # ------------------------------------------------------------------ connection

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self._key}"},
                    subprotocols=["wlex.v1"],  # type: ignore[list-item]
                    compression=None,  # small JSON frames: deflate costs more than it saves
                    proxy=None,
                    open_timeout=self._open_timeout_s,
                    max_size=4 * 1024 * 1024,
                ) as ws:
                    failures = await self._session(ws, failures)
            except asyncio.CancelledError:
                raise
            except StreamClosed as exc:
                self._end(exc)
                return
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                    self._end(StreamClosed("refused", exc.response.status_code))
                    return
                log.info("stream connection failed: %s", exc)
            finally:
                self._ws = None
                self._live.clear()
            failures += 1
            if failures > self._reconnects_max:
                self._end(StreamClosed(f"gave up after {failures - 1} reconnects"))
                return
            self.reconnects += 1
            await asyncio.sleep(min(self._backoff_max_s, 0.05 * 2 ** min(failures, 10)))

    async def _session(self, ws: ClientConnection, failures: int) -> int:
        subscribe = {"op": "subscribe", **{k: v for k, v in self._subscription.items() if v}}
        if self.cursor is not None:
            subscribe["cursor"] = self.cursor
        await ws.send(orjson.dumps(subscribe).decode())
        try:
            async for message in ws:
                frame = orjson.loads(message)
                kind = frame.get("type")
                if kind == "event":
                    self.cursor = frame["cursor"]
                    await self._events.put(frame)
                elif kind == "cursor":
                    self.cursor = frame["cursor"]
                elif kind == "subscribed":
                    self.cursor = frame["cursor"]
                    self._ws = ws
                    self._live.set()
                    failures = 0
                    for data, _ in list(self._pending.values()):
                        await ws.send(data.decode())
                elif kind in ("ack", "error"):
                    self._answer(frame)
        except ConnectionClosed:
            pass
        code = ws.close_code
        if code in FATAL_CLOSES:
            raise StreamClosed(FATAL_CLOSES[code], code)
        return failures

    def _answer(self, frame: dict[str, Any]) -> None:
        ref = frame.get("client_ref")
        if frame.get("op") == "subscribe" or ref is None:
            problem = frame.get("problem") or {}
            if frame.get("type") == "error" and frame.get("op") == "subscribe":
                # A subscription the gateway cannot serve (a cursor older than it
                # replays): resubscribing from now would hide a gap, so stop.
                raise StreamClosed(f"subscribe refused: {problem.get('reason')}")
            log.warning("stream error: %s", problem)
            return
        pending = self._pending.get(ref)
        if pending is None or pending[1].done():
            return
        if frame["type"] == "ack":
            pending[1].set_result(frame["result"])
        else:
            pending[1].set_exception(CommandError(frame["problem"]))

    def _end(self, exc: StreamClosed) -> None:
        if self._fatal is None:
            self._fatal = exc
            for _, future in self._pending.values():
                if not future.done():
                    future.set_exception(exc)
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(_END)

"""WebSocket /v1/stream: the carriers' live market feed, and bids and offers placed on
the same socket (the protocol is in docs/stream.md).

Authentication: `Authorization: Bearer <key>` (SDKs), or for browsers, which cannot set
headers on a WebSocket, the subprotocol list ["wlex.v1", "bearer.<key>"] (the server
echoes "wlex.v1", never the key). A refused key is answered after the handshake with a
close code a browser can read: 4401 (no, wrong or suspended key), 4403 (not a carrier).

Commands go the REST path: the same command builders (services.gateway.commands), the
same Idempotency-Key store with client_ref as the key, the same forward() (record,
send to `commands`, wait for the ack), the same problem words in the error frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, WebSocket
from pydantic import TypeAdapter
from starlette.websockets import WebSocketDisconnect

from services.common import reasons
from services.common.envelope import new_id
from services.gateway import bodies, commands, feed, idempotency, problems
from services.gateway.auth import Caller
from services.gateway.deps import Call, Deps
from services.gateway.forward import Recorded, forward
from services.gateway.hub import SLOW_CONSUMER, Frames, Hub, Listener
from services.gateway.models import Fen, Id, OfferRequest, _Strict
from services.gateway.offers import offer_row
from services.gateway.ratelimit import retry_after_header
from services.gateway.reference import tables
from services.gateway.ws_protocol import SEND_TEXTS

log = logging.getLogger(__name__)

router = APIRouter()

SUBPROTOCOL = "wlex.v1"
BEARER_PREFIX = "bearer."
# Close codes (docs/stream.md). 1008/1009/1011/1013 are RFC 6455's; 44xx mirror HTTP.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW = SLOW_CONSUMER  # 4408: resume with the last cursor
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013  # starting, stopping, or full
CLOSE_INTERNAL = 1011
COMMANDS_IN_FLIGHT_MAX = 16  # per connection; the reader waits beyond it

_ANSWER_HEADERS = {"content-type": "application/json"}


class BidFrame(_Strict):
    op: str
    client_ref: str
    load_id: Id
    price_fen: Fen


class WithdrawFrame(_Strict):
    op: str
    client_ref: str
    bid_id: Id


class CancelFrame(_Strict):
    op: str
    client_ref: str
    offer_id: Id


BID = TypeAdapter(BidFrame)
WITHDRAW = TypeAdapter(WithdrawFrame)
CANCEL = TypeAdapter(CancelFrame)
OFFER = TypeAdapter(OfferRequest)


def _token(ws: WebSocket) -> tuple[str | None, str | None]:
    """(the Authorization header value to check, the subprotocol to echo)."""
    offered = list(ws.scope.get("subprotocols") or [])
    echo = SUBPROTOCOL if SUBPROTOCOL in offered else None
    header = ws.headers.get("authorization")
    if header:
        return header, echo
    for proto in offered:
        if proto.startswith(BEARER_PREFIX):
            return "Bearer " + proto[len(BEARER_PREFIX) :], echo
    return None, echo


async def _refuse(ws: WebSocket, subprotocol: str | None, code: int, reason: str) -> None:
    # Accept, then close: a refused handshake reaches a browser as a bare 1006 with no
    # reason, while a close code after the handshake can be read and acted on.
    await ws.accept(subprotocol=subprotocol)
    await ws.close(code, reason[:120])


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    authorization, subprotocol = _token(ws)
    deps: Deps | None = ws.app.state.deps
    hub: Hub | None = getattr(ws.app.state, "hub", None)
    if deps is None or hub is None or not hub.ready.is_set():
        await _refuse(ws, subprotocol, CLOSE_TRY_LATER, "starting")
        return
    try:
        caller = await deps.auth.authenticate(authorization)
    except problems.ProblemError as exc:
        await _refuse(ws, subprotocol, CLOSE_UNAUTHENTICATED, exc.detail or exc.reason)
        return
    if caller.role != "carrier":
        await _refuse(ws, subprotocol, CLOSE_FORBIDDEN, f"a {caller.role} may not use the stream")
        return
    if len(hub.listeners) >= hub.config.connections_max:
        await _refuse(ws, subprotocol, CLOSE_TRY_LATER, "too many connections; retry")
        return
    await ws.accept(subprotocol=subprotocol)
    await Session(ws, deps, hub, caller, authorization or "").run()


class Session:
    """One connection: a reader of client frames, a sender of queued frames."""

    def __init__(self, ws: WebSocket, deps: Deps, hub: Hub, caller: Caller, authorization: str):
        self.ws = ws
        self.deps = deps
        self.hub = hub
        self.caller = caller
        self.authorization = authorization
        self.listener: Listener | None = None
        self.subscribing = False
        self.close_code = 1000
        self.close_reason = ""
        # The server's send-many extension (services.gateway.ws_protocol), when it has
        # one: frames are then written many per socket write, and by the hub directly
        # when this connection's sender is idle (Frames.put_many).
        extension = (ws.scope.get("extensions") or {}).get(SEND_TEXTS)
        self._send_texts = extension["send"] if extension else None
        writer = extension["try_write"] if extension else None
        self.queue = Frames(hub.config.queue_frames_max, writer)
        self.sender: asyncio.Task | None = None
        self.reader: asyncio.Task | None = None
        self.in_flight: set[asyncio.Task] = set()
        self.slots = asyncio.Semaphore(COMMANDS_IN_FLIGHT_MAX)

    def end(self, code: int, reason: str) -> None:
        """Close the connection with code: stop both tasks (safe from the hub)."""
        if self.close_code == 1000:
            self.close_code, self.close_reason = code, reason
        for task in (self.sender, self.reader):
            if task is not None:
                task.cancel()

    async def run(self) -> None:
        self.sender = asyncio.create_task(self._send_loop())
        self.reader = asyncio.create_task(self._read_loop())
        try:
            done, _ = await asyncio.wait(
                {self.sender, self.reader}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("stream connection failed", exc_info=task.exception())
                    self.end(CLOSE_INTERNAL, "internal error")
        finally:
            if self.listener is not None:
                self.hub.unregister(self.listener)
            for task in (self.sender, self.reader, *self.in_flight):
                task.cancel()
            for task in (self.sender, self.reader, *self.in_flight):
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.ws.close(self.close_code, self.close_reason[:120])

    async def _send_loop(self) -> None:
        send = self.ws.send
        send_texts = self._send_texts
        queue = self.queue
        try:
            while True:
                # Every frame waiting, one wake-up: at fan-out rates the wake-ups and
                # the per-frame layers cost the gateway more than the frames.
                texts = await queue.take_all()
                if send_texts is not None:
                    await send_texts(texts)  # one socket write
                    continue
                for text in texts:
                    await send({"type": "websocket.send", "text": text})
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.end(1000, "")

    def _send(self, doc: dict[str, Any]) -> None:
        """Queue a control frame (ack, error, subscribed); a full queue drops us."""
        try:
            self.queue.put_nowait(orjson.dumps(doc).decode())
        except asyncio.QueueFull:
            self.end(CLOSE_SLOW, "slow consumer; resume with your last cursor")

    async def _read_loop(self) -> None:
        limit = self.hub.config.frame_chars_max
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    self._error(None, None, problems.ProblemError(
                        400, problems.MALFORMED, "frames are JSON text"))  # fmt: skip
                    continue
                if len(text) > limit:
                    self.end(CLOSE_TOO_BIG, f"frames are limited to {limit} characters")
                    return
                await self._dispatch(text)
        except WebSocketDisconnect:
            return

    async def _dispatch(self, text: str) -> None:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._error(None, None, problems.ProblemError(400, problems.MALFORMED, "not JSON"))
            return
        if not isinstance(doc, dict) or bodies._depth(doc) > bodies.DEPTH_MAX:
            self._error(None, None, problems.ProblemError(
                400, problems.MALFORMED, "a frame is a JSON object"))  # fmt: skip
            return
        op, ref = doc.get("op"), doc.get("client_ref")
        ref = ref if isinstance(ref, str) else None
        if not isinstance(op, str) or op not in _OPS:
            self._error(op if isinstance(op, str) else None, ref, problems.ProblemError(
                422, reasons.INVALID, f"op is one of {', '.join(sorted(_OPS))}"))  # fmt: skip
            return
        try:
            self._admit()
            if op == "subscribe":
                await self._subscribe(doc)
                return
            idempotency.parse_header(ref)  # client_ref is the command's Idempotency-Key
        except problems.ProblemError as exc:
            self._error(op, ref, exc)
            return
        await self.slots.acquire()
        task = asyncio.create_task(self._command(_OPS[op], op, ref, doc))
        self.in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self.slots.release()

    def _admit(self) -> None:
        """The key's rate limit, as for a REST call."""
        wait_s = self.deps.limiter.take(self.caller.key_id)
        if wait_s > 0:
            raise problems.ProblemError(
                429, problems.RATE_LIMITED,
                f"at most {self.deps.config.rate_per_s:g} frames a second per key",
                headers={"Retry-After": retry_after_header(wait_s)},
            )  # fmt: skip

    async def _command(self, handler, op: str, ref: str, doc: dict) -> None:
        try:
            # A suspension takes effect on the next command (within the auth cache's
            # time when made through another gateway instance).
            await self.deps.auth.authenticate(self.authorization)
        except problems.ProblemError as exc:
            self.end(CLOSE_UNAUTHENTICATED, exc.detail or exc.reason)
            return
        try:
            response = await handler(self, doc, Call(self.deps, self.caller, ref))
        except problems.ProblemError as exc:
            self._error(op, ref, exc)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("stream %s: %s", op, exc)
            self._error(op, ref, problems.ProblemError(
                503, problems.UNAVAILABLE, "a dependency did not answer; resend the frame"))  # fmt: skip
            return
        except Exception:
            log.exception("stream %s failed", op)
            self._error(op, ref, problems.ProblemError(500, problems.INTERNAL, None))
            return
        if response.status_code >= 400:  # a stored problem answer of this client_ref
            self._send({"type": "error", "op": op, "client_ref": ref,
                        "problem": orjson.loads(response.body)})  # fmt: skip
            return
        self._send({
            "type": "ack", "op": op, "client_ref": ref,
            "replayed": response.headers.get(idempotency.REPLAYED_HEADER) == "true",
            "result": orjson.loads(response.body),
        })  # fmt: skip

    def _error(self, op: str | None, ref: str | None, exc: problems.ProblemError) -> None:
        problem = exc.body()
        if "Retry-After" in exc.headers:
            problem["retry_after_s"] = int(exc.headers["Retry-After"])
        self._send({"type": "error", "op": op, "client_ref": ref, "problem": problem})

    # ------------------------------------------------------------------ subscribe

    async def _subscribe(self, doc: dict) -> None:
        extra = set(doc) - {"op", "client_ref", "lanes", "regions", "vehicle_classes", "cursor"}
        if extra:
            raise problems.ProblemError(422, reasons.INVALID, f"unknown fields {sorted(extra)}")
        try:
            subscription = feed.parse_subscription(doc)
            cursor = feed.decode_cursor(doc["cursor"]) if doc.get("cursor") is not None else None
        except feed.FeedError as exc:
            raise problems.ProblemError(422, exc.reason, exc.detail) from None
        if self.listener is not None or self.subscribing:
            if cursor is not None:
                raise problems.ProblemError(
                    422, reasons.INVALID, "a cursor is taken by the first subscribe only"
                )
            if self.listener is not None:
                self.hub.resubscribe(self.listener, subscription)
            self._send({"type": "subscribed", "client_ref": doc.get("client_ref"),
                        "cursor": self.hub.cursor()})  # fmt: skip
            return
        self.subscribing = True
        listener = Listener(self.caller.participant_id, subscription,
                            self.hub.config.queue_frames_max, lambda: None)  # fmt: skip
        listener.queue = self.queue  # one queue per connection: events and control frames
        listener.on_overflow = lambda: self.end(
            CLOSE_SLOW, "slow consumer; resume with your last cursor"
        )
        try:
            start = await self.hub.attach(listener, cursor)
        except feed.FeedError as exc:
            self.subscribing = False
            raise problems.ProblemError(422, exc.reason, exc.detail) from None
        except TimeoutError:
            self.end(CLOSE_SLOW, "the resume did not catch up; resume with your last cursor")
            return
        self.listener = listener
        # Queued in the same step as the registration: every frame after it is live.
        self._send({"type": "subscribed", "client_ref": doc.get("client_ref"), "cursor": start})


# ---------------------------------------------------------------------------- commands


def _fingerprint(op: str, doc: dict) -> bytes:
    # A resent frame is the same request whatever its key order; client_ref is the key.
    return idempotency.fingerprint("WS", f"/v1/stream#{op}",
                                   {k: v for k, v in doc.items() if k != "client_ref"})  # fmt: skip


def _answer(body: dict) -> idempotency.Answer:
    return idempotency.Answer(202, _ANSWER_HEADERS, orjson.dumps(body))


async def _bid(session: Session, doc: dict, call: Call):
    frame = bodies.parse(BID, doc)
    deps, carrier = call.deps, call.caller.participant_id
    row = await deps.pool.fetchrow(
        "SELECT origin, destination, vehicle_class FROM load WHERE load_id = $1", frame.load_id
    )
    if row is None:
        raise problems.ProblemError(404, reasons.UNKNOWN_ORDER, f"no load {frame.load_id}")
    now = deps.clock_ms()
    key = commands.lane_key(dict(row))
    command = commands.bid_place(frame.load_id, new_id(now), carrier, frame.price_fen, key, now)

    def record(cmd: dict) -> Recorded:
        d = cmd["data"]
        origin, destination, vehicle_class = cmd["key"].split(">")
        sql = (
            "INSERT INTO bid_request (bid_id, carrier_id, load_id, price_fen, origin, destination,"
            " vehicle_class, command_id, requested_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (bid_id) DO NOTHING"
        )
        args = (d["bid_id"], d["carrier_id"], d["load_id"], d["price_fen"], origin, destination,
                vehicle_class, cmd["id"], cmd["ts"])  # fmt: skip
        session.hub.lookups.remember_owner(d["bid_id"], d["carrier_id"])
        body = {"status": "requested", "command_id": cmd["id"], "bid_id": d["bid_id"],
                "load_id": d["load_id"]}  # fmt: skip
        return Recorded(sql, args, _answer(body))

    return await forward(call, _fingerprint("bid", doc), command, record)


async def _withdraw(session: Session, doc: dict, call: Call):
    frame = bodies.parse(WITHDRAW, doc)
    deps, carrier = call.deps, call.caller.participant_id
    row = await deps.pool.fetchrow(
        "SELECT origin, destination, vehicle_class FROM bid_request"
        " WHERE bid_id = $1 AND carrier_id = $2",
        frame.bid_id, carrier,
    )  # fmt: skip
    if row is None:
        raise problems.ProblemError(404, reasons.UNKNOWN_ORDER, f"no bid {frame.bid_id} of yours")
    now = deps.clock_ms()
    command = commands.bid_withdraw(frame.bid_id, carrier, commands.lane_key(dict(row)), now)

    def record(cmd: dict) -> Recorded:
        sql = (
            "UPDATE bid_request SET withdraw_command_id = COALESCE(withdraw_command_id, $2),"
            " withdraw_requested_ms = COALESCE(withdraw_requested_ms, $3) WHERE bid_id = $1"
        )
        body = {"command_id": cmd["id"], "bid_id": frame.bid_id}
        return Recorded(sql, (frame.bid_id, cmd["id"], cmd["ts"]), _answer(body))

    return await forward(call, _fingerprint("withdraw", doc), command, record)


async def _offer(session: Session, doc: dict, call: Call):
    fields = {k: v for k, v in doc.items() if k not in ("op", "client_ref")}
    req = bodies.parse(OFFER, fields)
    deps, carrier = call.deps, call.caller.participant_id
    now = deps.clock_ms()
    commands.check_offer(req, tables(), now)
    command = commands.offer_post(req, new_id(now), carrier, now)

    def record(cmd: dict) -> Recorded:
        d = cmd["data"]
        sql, args = offer_row(cmd)  # the row POST /v1/offers writes
        session.hub.lookups.remember_owner(d["offer_id"], d["carrier_id"])
        body = {"status": "requested", "command_id": cmd["id"], "offer_id": d["offer_id"]}
        return Recorded(sql, args, _answer(body))

    return await forward(call, _fingerprint("offer", doc), command, record)


async def _cancel(session: Session, doc: dict, call: Call):
    frame = bodies.parse(CANCEL, doc)
    deps, carrier = call.deps, call.caller.participant_id
    row = await deps.pool.fetchrow(
        "SELECT origin, destination, vehicle_class FROM offer WHERE offer_id = $1 AND carrier_id = $2",
        frame.offer_id, carrier,
    )  # fmt: skip
    if row is None:
        raise problems.ProblemError(
            404, reasons.UNKNOWN_ORDER, f"no offer {frame.offer_id} of yours"
        )
    now = deps.clock_ms()
    command = commands.offer_cancel(frame.offer_id, carrier, commands.lane_key(dict(row)), now)

    def record(cmd: dict) -> Recorded:
        sql = (
            "UPDATE offer SET cancel_command_id = COALESCE(cancel_command_id, $2),"
            " cancel_requested_ms = COALESCE(cancel_requested_ms, $3) WHERE offer_id = $1"
        )
        body = {"command_id": cmd["id"], "cancel_requested_at": cmd["ts"]}
        return Recorded(sql, (frame.offer_id, cmd["id"], cmd["ts"]), _answer(body))

    return await forward(call, _fingerprint("cancel", doc), command, record)


_OPS = {
    "subscribe": None,
    "bid": _bid,
    "withdraw": _withdraw,
    "offer": _offer,
    "cancel": _cancel,
}

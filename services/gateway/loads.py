"""Shippers' loads: POST /v1/loads, GET /v1/loads, GET /v1/loads/{id}, and cancel."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter

from services.common import reasons
from services.common.envelope import new_id
from services.gateway import bodies, commands, idempotency, loadlog, pages, problems
from services.gateway.deps import Call, DirectRoute, authorized, documented
from services.gateway.forward import Recorded, forward
from services.gateway.models import (
    LOAD_EXAMPLES,
    CancelAccepted,
    Load,
    LoadAccepted,
    LoadPage,
    LoadRequest,
    LoadStatus,
    Region,
    VehicleClass,
)
from services.gateway.reference import tables

ShipperPost = Annotated[Call, Depends(authorized("shipper", idempotent=True))]
ShipperGet = Annotated[Call, Depends(authorized("shipper"))]
router = APIRouter(tags=["loads"], route_class=DirectRoute)
LOAD_REQUEST = TypeAdapter(LoadRequest)
LoadId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[!-~]+$")]

# The load's row, its deal (once dealt) and its bids, in one round trip.
_COLUMNS = (
    "l.load_id, l.shipper_id, l.status, l.data::text AS data, l.requested_ms,"
    " l.cancel_requested_ms, l.reject_reason, d.deal_id, d.carrier_id AS deal_carrier_id,"
    " d.offer_id AS deal_offer_id, d.bid_id AS deal_bid_id, d.price_fen AS deal_price_fen,"
    " (SELECT json_agg(json_build_object('bid_id', b.bid_id, 'carrier_id', b.carrier_id,"
    "   'price_fen', b.price_fen, 'placed_at', b.placed_ms, 'status', b.status)"
    "   ORDER BY b.placed_ms, b.bid_id)::text FROM bid b WHERE b.load_id = l.load_id) AS bids"
)
_FROM = "load l LEFT JOIN deal d ON d.load_id = l.load_id"


def _view(row) -> dict:
    data = orjson.loads(row["data"])
    return {
        "load_id": row["load_id"],
        "shipper_id": row["shipper_id"],
        "status": row["status"],
        "lane": data["lane"],
        "weight_kg": data["weight_kg"],
        "volume_dm3": data["volume_dm3"],
        "cargo_category": data["cargo_category"],
        "pickup_from": data["pickup_from"],
        "pickup_to": data["pickup_to"],
        "deliver_by": data.get("deliver_by"),
        "declared_value_fen": data.get("declared_value_fen"),
        "mode": data["mode"],
        "limit_fen": data.get("limit_fen"),
        "auction": data.get("auction"),
        "requested_at": row["requested_ms"],
        "cancel_requested_at": row["cancel_requested_ms"],
        "reject_reason": row["reject_reason"],
        "deal": _deal(row),
        "bids": orjson.loads(row["bids"]) if row["bids"] else [],
        "policy": None,  # insurance's events are not there yet
    }


def _deal(row) -> dict | None:
    # A settlement fact can reach the deal's row before deal.made does: shown once the
    # deal itself is known.
    if row["deal_id"] is None or row["deal_price_fen"] is None or row["deal_carrier_id"] is None:
        return None
    return {
        "deal_id": row["deal_id"],
        "carrier_id": row["deal_carrier_id"],
        "offer_id": row["deal_offer_id"],
        "bid_id": row["deal_bid_id"],
        "price_fen": row["deal_price_fen"],
    }


def _unknown(load_id: str) -> problems.ProblemError:
    # Another shipper's load answers exactly like a missing one: ids are not disclosed.
    return problems.ProblemError(404, reasons.UNKNOWN_ORDER, f"no load {load_id} of yours")


@router.post(
    "/v1/loads",
    status_code=202,
    response_model=LoadAccepted,
    summary="Post a load (market or auction)",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problems.problem_responses(400, 401, 403, 409, 413, 415, 422, 429, 503),
    },
    openapi_extra=documented(idempotent=True, body="LoadRequest", examples=LOAD_EXAMPLES),
)
async def post_load(request: Request, call: ShipperPost) -> Response:
    """Checks the load against the region and vehicle-class tables and the engine's
    rules, sends load.post to the exchange, and answers once the broker has it. The
    outcome (open, dealt, rejected) follows at GET /v1/loads/{id}."""
    deps, caller = call.deps, call.caller
    doc = await bodies.read_json(request, deps.config.body_bytes_max)
    req = bodies.parse(LOAD_REQUEST, doc)
    now = deps.clock_ms()
    commands.check_load(req, tables(), now)
    command = commands.load_post(req, new_id(now), caller.participant_id, now)
    fp = idempotency.fingerprint("POST", "/v1/loads", doc)

    def record(cmd: dict) -> Recorded:
        d = cmd["data"]
        lane = d["lane"]
        args = (
            d["load_id"], d["shipper_id"], lane["origin"], lane["destination"],
            lane["vehicle_class"], cmd["id"], orjson.dumps(d).decode(), cmd["ts"],
        )  # fmt: skip
        sql = (
            "INSERT INTO load (load_id, shipper_id, status, origin, destination, vehicle_class,"
            " command_id, data, requested_ms) VALUES ($1, $2, 'requested', $3, $4, $5, $6,"
            " $7::jsonb, $8) ON CONFLICT (load_id) DO NOTHING"
        )
        body = LoadAccepted(load_id=d["load_id"], command_id=cmd["id"])
        headers = {"location": f"/v1/loads/{d['load_id']}", "content-type": "application/json"}
        return Recorded(
            sql, args, idempotency.Answer(202, headers, orjson.dumps(body.model_dump()))
        )

    return await forward(call, fp, command, record)


@router.get(
    "/v1/loads",
    response_model=LoadPage,
    summary="The caller's loads, newest first",
    responses=problems.problem_responses(401, 403, 422, 429),
    openapi_extra=documented(),
)
async def list_loads(
    call: ShipperGet,
    status: LoadStatus | None = None,
    origin: Region | None = None,
    destination: Region | None = None,
    vehicle_class: VehicleClass | None = None,
    limit: Annotated[int, Query(ge=1, le=pages.LIMIT_MAX)] = pages.LIMIT_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    deps, caller = call.deps, call.caller
    after = pages.decode_cursor(cursor)
    rows = await deps.pool.fetch(
        f"SELECT {_COLUMNS} FROM {_FROM} WHERE l.shipper_id = $1"
        " AND ($2::text IS NULL OR l.status = $2) AND ($3::text IS NULL OR l.origin = $3)"
        " AND ($4::text IS NULL OR l.destination = $4)"
        " AND ($5::text IS NULL OR l.vehicle_class = $5)"
        " AND ($6::text IS NULL OR l.load_id < $6) ORDER BY l.load_id DESC LIMIT $7",
        caller.participant_id, status, origin, destination, vehicle_class, after, limit + 1,
    )  # fmt: skip
    items = [_view(r) for r in rows[:limit]]
    page = {"items": items, "next_cursor": pages.next_cursor([r["load_id"] for r in rows], limit)}
    return Response(orjson.dumps(page), media_type="application/json")


@router.get(
    "/v1/loads/{load_id}",
    response_model=Load,
    summary="One of the caller's loads",
    responses=problems.problem_responses(401, 403, 404, 422, 429),
    openapi_extra=documented(),
)
async def get_load(load_id: LoadId, call: ShipperGet) -> Response:
    deps, caller = call.deps, call.caller
    row = await deps.pool.fetchrow(
        f"SELECT {_COLUMNS} FROM {_FROM} WHERE l.load_id = $1 AND l.shipper_id = $2",
        load_id, caller.participant_id,
    )  # fmt: skip
    if row is None:
        raise _unknown(load_id)
    return Response(orjson.dumps(_view(row)), media_type="application/json")


SSE = "text/event-stream"
LastEventId = Annotated[
    int | None,
    Header(
        ge=0,
        le=2**62,
        description="resume after this event (the `id:` of the last event received)",
    ),
]


@router.get(
    "/v1/loads/{load_id}/events",
    summary="The load's events as server-sent events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: one event per market, settlement or shipment"
            " event of the load, `id:` its sequence number in the load's log (1, 2, ...),"
            " `event:` its type, `data:` the envelope. Comments keep the connection alive;"
            " the stream ends when the load is final or after a maximum duration.",
            "content": {SSE: {"schema": {"type": "string"}}},
        },
        **problems.problem_responses(401, 403, 404, 422, 429, 503),
    },
    openapi_extra=documented(),
)
async def load_events(
    load_id: LoadId, call: ShipperGet, last_event_id: LastEventId = None
) -> StreamingResponse:
    """Every event of the load from the start, or after `Last-Event-ID`, then new ones
    as they are projected; ends once the load is settled, cancelled, expired, rejected
    or refunded, or after a maximum duration (reconnect with Last-Event-ID)."""
    deps, caller = call.deps, call.caller
    owned = await deps.pool.fetchval(
        "SELECT true FROM load WHERE load_id = $1 AND shipper_id = $2",
        load_id, caller.participant_id,
    )  # fmt: skip
    if not owned:
        raise _unknown(load_id)
    c = deps.config
    if len(deps.load_log) >= c.sse_streams_max:
        raise problems.ProblemError(
            503, problems.UNAVAILABLE, "too many event streams open; retry",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    body = loadlog.stream(
        deps.pool, deps.load_log, load_id, last_event_id or 0,
        keepalive_s=c.sse_keepalive_s, max_s=c.sse_max_s, poll_s=c.sse_poll_s,
    )  # fmt: skip
    # no-cache: a proxy must not answer a resume from an old copy; X-Accel-Buffering:
    # nginx would otherwise hold events back in its buffer.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type=SSE, headers=headers)


@router.post(
    "/v1/loads/{load_id}/cancel",
    status_code=202,
    response_model=CancelAccepted,
    summary="Cancel a load",
    responses={
        202: {"headers": {"Location": {"schema": {"type": "string"}}}},
        **problems.problem_responses(400, 401, 403, 404, 409, 422, 429, 503),
    },
    openapi_extra=documented(idempotent=True),
)
async def cancel_load(load_id: LoadId, call: ShipperPost) -> Response:
    """Sends load.cancel; the engine cancels the load if it is still open (an open
    auction drops its bids). No body."""
    deps, caller = call.deps, call.caller
    row = await deps.pool.fetchrow(
        "SELECT origin, destination, vehicle_class FROM load WHERE load_id = $1 AND shipper_id = $2",
        load_id, caller.participant_id,
    )  # fmt: skip
    if row is None:
        raise _unknown(load_id)
    now = deps.clock_ms()
    key = commands.lane_key(dict(row))
    command = commands.load_cancel(load_id, caller.participant_id, key, now)
    path = f"/v1/loads/{load_id}/cancel"
    fp = idempotency.fingerprint("POST", path, None)

    def record(cmd: dict) -> Recorded:
        # The first cancel's id and time stay on the row; the answer is this command's.
        sql = (
            "UPDATE load SET cancel_command_id = COALESCE(cancel_command_id, $2),"
            " cancel_requested_ms = COALESCE(cancel_requested_ms, $3) WHERE load_id = $1"
        )
        body = CancelAccepted(command_id=cmd["id"], cancel_requested_at=cmd["ts"])
        headers = {"location": f"/v1/loads/{load_id}", "content-type": "application/json"}
        answer = idempotency.Answer(202, headers, orjson.dumps(body.model_dump()))
        return Recorded(sql, (load_id, cmd["id"], cmd["ts"]), answer)

    return await forward(call, fp, command, record)
